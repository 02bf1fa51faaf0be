"""Counter-based randomness: every (seed, output position, token id) has one fixed uniform.

A stateful generator would make a request's draws depend on everything drawn before them:
the other rows of its batch, their order, and whether the request was retracted and
recomputed. Hashing the coordinates instead makes each draw a pure function of the request's
own seed and progress, identical on any device and in any batch.

The hash is murmur3's 32-bit finalizer. Values are 32-bit numbers held in non-negative int64
tensors, and every product is split into 16-bit halves so that no intermediate exceeds 2**49:
nothing overflows, so CPU and CUDA produce the same bits.
"""

from __future__ import annotations

import secrets

import torch

MASK32 = 0xFFFFFFFF
_LOW16 = 0xFFFF
_FMIX_MULTIPLIERS = (0x85EBCA6B, 0xC2B2AE35)
_SEED_SALT = 0x9E3779B9   # keeps seed 0 at position 0 from hashing the all-zero word
_TOKEN_SALT = 0x7F4A7C15
_UNIFORM_BITS = 23        # float32 holds 2 * u23 + 1 < 2**24 exactly, so u never rounds to 0 or 1
_UNIFORM_SCALE = 2.0 ** -(_UNIFORM_BITS + 1)


def draw_seed() -> int:
    """A fresh seed for a request that did not ask for one (drawn once, at registration)."""
    return secrets.randbits(63)


def _mul32_(x: torch.Tensor, multiplier: int) -> torch.Tensor:
    """`x = (x * multiplier) mod 2**32` in place, for 32-bit `x` and `multiplier`."""
    high = (x >> 16).mul_(multiplier).bitwise_and_(_LOW16).bitwise_left_shift_(16)
    return x.bitwise_and_(_LOW16).mul_(multiplier).add_(high).bitwise_and_(MASK32)


def fmix32_(x: torch.Tensor) -> torch.Tensor:
    """murmur3's finalizer, in place: a bijection on 32-bit values with full avalanche."""
    first, second = _FMIX_MULTIPLIERS
    x.bitwise_xor_(x >> 16)
    _mul32_(x, first)
    x.bitwise_xor_(x >> 13)
    _mul32_(x, second)
    return x.bitwise_xor_(x >> 16)


def row_keys(seeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """One 32-bit key per (seed, output position) row; `seeds` may use all 63 bits. [B] int64."""
    key = fmix32_((seeds >> 32).bitwise_xor(_SEED_SALT))
    key = fmix32_(key.bitwise_xor_(seeds & MASK32))
    return fmix32_(key.bitwise_xor_(positions & MASK32))


def token_keys(vocab_size: int, device: torch.device | str) -> torch.Tensor:
    """One 32-bit key per token id, [V] int64; depends on nothing else, so callers cache it."""
    ids = torch.arange(vocab_size, dtype=torch.int64, device=device)
    return fmix32_(ids.bitwise_xor_(_TOKEN_SALT))


def hash_uniforms(rows: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Uniforms in the open interval (0, 1), [B, V] float32, from row keys [B] and token keys [V].

    Each value is `(2 * b + 1) / 2**24` for 23 hashed bits `b`: exact in float32 on any device.
    """
    bits = fmix32_(rows[:, None].bitwise_xor(tokens[None, :]))
    odd = bits.bitwise_right_shift_(32 - _UNIFORM_BITS).mul_(2).add_(1)
    return odd.to(torch.float32).mul_(_UNIFORM_SCALE)


def exponential_noise(seeds: torch.Tensor, positions: torch.Tensor,
                      tokens: torch.Tensor) -> torch.Tensor:
    """Exp(1) samples `-log(u)`, [B, V] float32, all strictly positive.

    The log runs in float64 so that its result rounds to the same float32 on CPU and CUDA
    (float32 `log` implementations differ by an ulp between devices).
    """
    uniforms = hash_uniforms(row_keys(seeds, positions), tokens)
    return uniforms.to(torch.float64).log_().neg_().to(torch.float32)


def exponential_race(probs: torch.Tensor, seeds: torch.Tensor, positions: torch.Tensor,
                     tokens: torch.Tensor) -> torch.Tensor:
    """Draws one token per row of `probs` [B, V] (unnormalized, >= 0): `argmax(probs / E)`.

    Token `t` wins with probability `probs[t] / sum(probs)`, so zeroed tokens never win and
    renormalizing first would not change the winner. Under `torch.compile` this fuses into one
    pass over `probs` with the same bits as eager mode.
    """
    return (probs / exponential_noise(seeds, positions, tokens)).argmax(dim=-1)
