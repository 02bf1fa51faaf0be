"""Page keys: the one name a KV page has in every tier (L2, L3, Redis) and on every node.

A key is a chained SHA-256 over whole pages (design §4): `h_i = sha256(h_{i-1} || tokens of
page i as uint32 little-endian)`. `h_0` is the digest of a namespace (model, weights, KV dtype,
page size, tensor-parallel layout, cache salt), so pages that differ in any of those never share
a key, and a key names its whole prefix, not just its own tokens.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

KEY_BYTES = 32
MAX_TOKEN_ID = 2**32 - 1
# Part of every digest below: bump it when an encoding changes, so old L3 files go foreign.
_ENCODING = "radixmesh-page-key-v1"
_KEY_HEX = re.compile(f"[0-9a-f]{{{KEY_BYTES * 2}}}")


def _canonical_digest(fields: dict[str, object]) -> bytes:
    """SHA-256 of `fields` as compact sorted-key JSON, which spells each set of values one way
    and no two sets alike. ASCII escapes keep an undecodable path (a lone surrogate) hashable."""
    text = json.dumps({"encoding": _ENCODING, **fields}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("ascii")).digest()


@dataclass(frozen=True, slots=True)
class KeyNamespace:
    """Everything that makes one page's KV differ from another's for the same tokens.

    `cache_salt` None (no salt) and "" are different namespaces: a client that sends an empty
    salt asked for isolation and gets a namespace of its own.
    """

    model_id: str
    weights_fingerprint: str
    kv_dtype: str
    page_size: int
    tp_layout: str
    cache_salt: str | None = None

    def __post_init__(self) -> None:
        if self.page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {self.page_size}")
        for name in ("model_id", "weights_fingerprint", "kv_dtype", "tp_layout"):
            if not getattr(self, name):
                raise ValueError(f"{name} must not be empty")

    def root(self) -> bytes:
        """h_0: the 32-byte start of every key chain in this namespace."""
        return _canonical_digest({
            "model_id": self.model_id, "weights_fingerprint": self.weights_fingerprint,
            "kv_dtype": self.kv_dtype, "page_size": self.page_size,
            "tp_layout": self.tp_layout, "cache_salt": self.cache_salt})

    def with_salt(self, salt: str | None) -> KeyNamespace:
        """This namespace for a request that brought `salt` (None: no salt)."""
        return replace(self, cache_salt=salt)


def check_key(key: bytes, name: str = "a page key") -> None:
    """Raises ValueError unless `key` has the length of a page key."""
    if len(key) != KEY_BYTES:
        raise ValueError(f"{name} must be {KEY_BYTES} bytes, got {len(key)}")


def _pack_tokens(token_ids: Sequence[int]) -> bytes:
    """The ids as uint32 LE, checked: a wrapped id would silently share another id's key."""
    try:
        ids = np.asarray(token_ids, dtype=np.int64)
    except OverflowError:
        raise ValueError(f"token ids must be in [0, {MAX_TOKEN_ID}]") from None
    if ids.ndim != 1:
        raise ValueError(f"token ids must be one flat sequence, got shape {ids.shape}")
    if ids.size:
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high > MAX_TOKEN_ID:
            bad = low if low < 0 else high
            raise ValueError(f"token id {bad} is out of range [0, {MAX_TOKEN_ID}]")
    return ids.astype("<u4").tobytes()


def page_keys(namespace_root: bytes, token_ids: Sequence[int], page_size: int,
              parent: bytes | None = None) -> list[bytes]:
    """One key per full page of `token_ids`; a trailing partial page gets none.

    The chain starts at `parent` when given (the key of the page just before `token_ids`, to
    continue a chain computed earlier), else at `namespace_root`.
    """
    check_key(namespace_root, "namespace_root")
    if parent is not None:
        check_key(parent, "parent")
    if page_size < 1:
        raise ValueError(f"page_size must be >= 1, got {page_size}")
    packed = memoryview(_pack_tokens(token_ids))
    page_bytes = page_size * 4
    previous = namespace_root if parent is None else parent
    keys: list[bytes] = []
    for start in range(0, len(packed) - page_bytes + 1, page_bytes):
        digest = hashlib.sha256(previous)
        digest.update(packed[start:start + page_bytes])
        previous = digest.digest()
        keys.append(previous)
    return keys


def key_hex(key: bytes) -> str:
    """The key as 64 lowercase hex digits: a file name, a log field, a Redis key part."""
    check_key(key)
    return key.hex()


def key_from_hex(text: str) -> bytes | None:
    """The key a `key_hex` string names, or None where `text` is not one (a stray file name)."""
    return bytes.fromhex(text) if _KEY_HEX.fullmatch(text) else None


def _file_digest(path: Path) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"no {path.name} in {path.parent}")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _checkpoint_fields(model_dir: Path) -> dict[str, object]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        return {"index": _file_digest(index)}
    files = sorted((path.name, path.stat().st_size) for path in model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {model_dir}")
    return {"files": files}


def weights_fingerprint(model_dir: Path | None, dummy_seed: int | None,
                        quantized_at_load: str | None = None,
                        kv_scales: str | None = None) -> str:
    """A hex digest that changes whenever the weights may have changed.

    Real weights: config.json and the safetensors index file, or, without an index, the sorted
    (name, size) list of *.safetensors files; reading the tensors themselves would take minutes
    on a large checkpoint. Dummy weights (`dummy_seed` given): config.json (when `model_dir` is
    given) and the seed, which together fix every random weight. `quantized_at_load` (the
    worker's --quantization) changes the weights the KV is computed with, so it counts too; a
    pre-quantized checkpoint differs by its files already.

    `kv_scales`, the digest of an FP8 KV cache's scales (`KVScales.digest`), counts as well:
    the same tokens stored with other scales are other bytes, and neither the index nor the file
    sizes see a recalibrated scale or one from --quantization-param-path. It is None for unit
    scales and for a bf16/fp16 cache, whose fingerprint (and so page keys) stays as it was.
    """
    config = {} if model_dir is None else {"config": _file_digest(model_dir / "config.json")}
    if quantized_at_load:
        config["quantized_at_load"] = quantized_at_load
    if kv_scales:
        config["kv_scales"] = kv_scales
    if dummy_seed is not None:
        return _canonical_digest({**config, "dummy_seed": dummy_seed}).hex()
    if model_dir is None:
        raise ValueError("weights_fingerprint needs a model directory or a dummy seed")
    return _canonical_digest({**config, **_checkpoint_fields(model_dir)}).hex()
