"""Per-layer scales of an FP8 KV cache, as FP8 checkpoints carry them.

A scale multiplies the stored FP8 value to give the real one (stored = real / scale), the
convention of vLLM and SGLang and of the tools that calibrate checkpoints for them: a calibrated
scale is about amax / 448, so a layer whose keys reach 5,000 (or stay below 0.01) still uses
e4m3's whole range instead of clamping at 448 (or falling into its subnormals). One scalar per
layer for K and one for V (per-tensor); the names checkpoints use for them, all read here:

- `model.layers.{i}.self_attn.k_scale` / `v_scale`: llm-compressor's and vLLM's layout;
- `model.layers.{i}.self_attn.kv_scale`: one scale for both, older AutoFP8 checkpoints
  (vLLM maps it onto K and V alike, deprecated there);
- `model.layers.{i}.self_attn.k_proj.k_scale` / `v_proj.v_scale`: NVIDIA ModelOpt's;
- `model.layers.{i}.self_attn.k_proj.output_scale` / `v_proj.output_scale`: AMD Quark's (the
  output quantizer of the K and V projections, which vLLM and SGLang both read as KV scales).

The weight loader skips all of these (`is_kv_scale_name`); `read_checkpoint_scales` reads them
on their own, from the checkpoint's headers and a few bytes each.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

# Checkpoint suffix after `self_attn.` -> which of the layer's two scales it sets.
SCALE_SUFFIXES: dict[str, tuple[str, ...]] = {
    "k_scale": ("k",), "v_scale": ("v",), "kv_scale": ("k", "v"),
    "k_proj.k_scale": ("k",), "v_proj.v_scale": ("v",),
    "k_proj.output_scale": ("k",), "v_proj.output_scale": ("v",)}
_SCALE_NAME = re.compile(r"model\.layers\.(\d+)\.self_attn\.("
                         + "|".join(re.escape(suffix) for suffix in SCALE_SUFFIXES) + ")")


class KVScaleError(ValueError):
    """KV-cache scales that cannot be used: not finite, not positive, per head, or not one per
    layer."""


@dataclass(frozen=True)
class KVScales:
    """Invariants: `k` and `v` hold one finite, positive scale per layer of the model (this
    rank's, under tensor parallelism); `digest` names the scales of the whole tensor-parallel
    group in page keys, and is None exactly when every scale of the group is 1.0 (the bytes a
    cache without scales stores, so such pages keep their old keys)."""

    k: tuple[float, ...]
    v: tuple[float, ...]
    source: str = "none"  # where they came from, for logs and errors
    digest: str | None = None

    @classmethod
    def unit(cls, num_layers: int) -> KVScales:
        return cls((1.0,) * num_layers, (1.0,) * num_layers)

    @property
    def is_unit(self) -> bool:
        return all(scale == 1.0 for scale in self.k + self.v)

    def describe(self) -> str:
        return (f"from {self.source}: k {min(self.k):.4g}..{max(self.k):.4g}, "
                f"v {min(self.v):.4g}..{max(self.v):.4g}")


def make_scales(k: Sequence[float], v: Sequence[float], num_layers: int, source: str,
                group: Sequence[tuple[Sequence[float], Sequence[float]]] | None = None
                ) -> KVScales:
    """Checked scales for one rank; `group` lists every rank's (k, v) where ranks differ (an
    SGLang scales file), so the digest covers them all; by default every rank has `k`, `v`."""
    for name, scales in (("k", k), ("v", v)):
        if len(scales) != num_layers:
            raise KVScaleError(f"{source}: {len(scales)} {name} scales for a model of "
                               f"{num_layers} layers; one per layer expected")
        for layer, scale in enumerate(scales):
            check_scale(scale, f"{source}: layer {layer}'s {name} scale")
    return KVScales(tuple(map(float, k)), tuple(map(float, v)), source,
                    scales_digest(group or [(k, v)]))


def check_scale(scale: float, what: str) -> None:
    if not math.isfinite(scale) or scale <= 0:
        raise KVScaleError(f"{what} is {scale}; a KV-cache scale must be finite and > 0")


def scales_digest(group: Iterable[tuple[Sequence[float], Sequence[float]]]) -> str | None:
    """SHA-256 over every rank's scales, exact (float.hex); None when all are 1.0."""
    ranks = [([float(s) for s in k], [float(s) for s in v]) for k, v in group]
    if all(scale == 1.0 for k, v in ranks for scale in k + v):
        return None
    text = ";".join(",".join(s.hex() for s in k) + "|" + ",".join(s.hex() for s in v)
                    for k, v in ranks)
    return hashlib.sha256(text.encode()).hexdigest()


def is_kv_scale_name(name: str) -> bool:
    """True for a checkpoint tensor that is a KV-cache scale (the weight loader skips them)."""
    return _SCALE_NAME.fullmatch(name) is not None


def read_checkpoint_scales(files: Iterable[Path], num_layers: int) -> KVScales | None:
    """The checkpoint's KV scales, or None when it has none.

    A partial set (some layers, or only K of a layer) is an error rather than a warning with
    1.0 for the rest: calibration tools write every layer or none, so a gap means a damaged or
    mismatched checkpoint, and a layer left at 1.0 is exactly the layer whose keys may clamp at
    448 with nothing but worse output to show for it. `--kv-cache-dtype auto` serves it anyway.
    """
    found: dict[tuple[int, str], tuple[float, str]] = {}
    for file in files:
        with safe_open(file, framework="pt", device="cpu") as reader:
            for name in reader.keys():  # noqa: SIM118 (safe_open is not a mapping)
                match = _SCALE_NAME.fullmatch(name)
                if match is None:
                    continue
                layer, value = int(match[1]), _scalar(name, reader.get_tensor(name))
                for which in SCALE_SUFFIXES[match[2]]:
                    _put(found, (layer, which), value, name)
    if not found:
        return None
    return _complete(found, num_layers)


def _scalar(name: str, tensor: torch.Tensor) -> float:
    if not tensor.is_floating_point():
        raise KVScaleError(f"KV-cache scale {name} has dtype {tensor.dtype}; a float expected")
    if tensor.numel() != 1:
        raise KVScaleError(
            f"KV-cache scale {name} has shape {tuple(tensor.shape)}: per-head (or finer) KV "
            "scales are not supported, only one scalar per layer (per-tensor); serve this "
            "checkpoint with --kv-cache-dtype auto")
    value = float(tensor.float().item())
    check_scale(value, f"KV-cache scale {name}")
    return value


def _put(found: dict[tuple[int, str], tuple[float, str]], key: tuple[int, str], value: float,
         name: str) -> None:
    """Two spellings of one layer's scale must agree (a checkpoint may carry both)."""
    if key in found and found[key][0] != value:
        raise KVScaleError(f"conflicting KV-cache scales for layer {key[0]}'s {key[1]}: "
                           f"{found[key][1]} = {found[key][0]}, {name} = {value}")
    found.setdefault(key, (value, name))


def _complete(found: dict[tuple[int, str], tuple[float, str]], num_layers: int) -> KVScales:
    beyond = sorted({layer for layer, _ in found if layer >= num_layers})
    if beyond:
        raise KVScaleError(f"the checkpoint has KV-cache scales for layers {beyond}, beyond "
                           f"the model's {num_layers} layers")
    missing = [f"{layer}.{which}" for layer in range(num_layers) for which in ("k", "v")
               if (layer, which) not in found]
    if missing:
        shown = ", ".join(missing[:8]) + (", ..." if len(missing) > 8 else "")
        raise KVScaleError(
            f"the checkpoint has KV-cache scales for some layers but not all (missing "
            f"{len(missing)} of {2 * num_layers}: {shown}); refusing to fill the gaps with 1.0. "
            "Serve it with --kv-cache-dtype auto, or give every layer's scales with "
            "--quantization-param-path")
    k = [found[layer, "k"][0] for layer in range(num_layers)]
    v = [found[layer, "v"][0] for layer in range(num_layers)]
    return make_scales(k, v, num_layers, "the checkpoint")
