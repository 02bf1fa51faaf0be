"""Page keys: chained SHA-256 over whole pages, rooted in a namespace (design §4)."""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from radixmesh.shared.page_keys import (
    MAX_TOKEN_ID,
    KeyNamespace,
    key_from_hex,
    key_hex,
    page_keys,
    weights_fingerprint,
)

NAMESPACE = KeyNamespace(model_id="tiny-llama", weights_fingerprint="ab12", kv_dtype="bfloat16",
                         page_size=4, tp_layout="tp1")
ROOT = bytes(range(32))


def reference_keys(root: bytes, token_ids: list[int], page_size: int) -> list[bytes]:
    """The design's formula written out with struct, independently of the module."""
    keys, previous = [], root
    for start in range(0, len(token_ids) - page_size + 1, page_size):
        page = token_ids[start:start + page_size]
        previous = hashlib.sha256(previous + struct.pack(f"<{page_size}I", *page)).digest()
        keys.append(previous)
    return keys


def test_known_answer() -> None:
    tokens = [1, 2, 3, 0x01020304, MAX_TOKEN_ID, 7, 99]
    first = hashlib.sha256(ROOT + b"\x01\0\0\0\x02\0\0\0\x03\0\0\0").digest()
    second = hashlib.sha256(first + b"\x04\x03\x02\x01\xff\xff\xff\xff\x07\0\0\0").digest()
    assert page_keys(ROOT, tokens, 3) == [first, second]


def test_root_is_the_digest_of_the_namespace_as_sorted_json() -> None:
    # Pins the encoding: changing it orphans every L3 file already written.
    fields = {"encoding": "radixmesh-page-key-v1", "model_id": "tiny-llama",
              "weights_fingerprint": "ab12", "kv_dtype": "bfloat16", "page_size": 4,
              "tp_layout": "tp1", "cache_salt": None}
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    assert NAMESPACE.root() == hashlib.sha256(text.encode()).digest()
    assert len(NAMESPACE.root()) == 32


@settings(max_examples=50, deadline=None)
@given(tokens=st.lists(st.integers(0, MAX_TOKEN_ID), max_size=40),
       page_size=st.integers(1, 5), cut=st.integers(0, 40))
def test_matches_the_reference_and_prefix_keys_are_a_prefix(
        tokens: list[int], page_size: int, cut: int) -> None:
    keys = page_keys(ROOT, tokens, page_size)
    assert keys == reference_keys(ROOT, tokens, page_size)
    assert page_keys(ROOT, tokens[:cut], page_size) == keys[:min(cut, len(tokens)) // page_size]


@pytest.mark.parametrize("change", [
    {"model_id": "other-model"}, {"weights_fingerprint": "cd34"}, {"kv_dtype": "float16"},
    {"page_size": 8}, {"tp_layout": "tp2"}, {"cache_salt": "tenant-a"}, {"cache_salt": ""},
])
def test_any_namespace_change_changes_every_key(change: dict[str, object]) -> None:
    tokens = list(range(64))
    keys = page_keys(NAMESPACE.root(), tokens, 4)
    other = page_keys(replace(NAMESPACE, **change).root(), tokens, 4)
    assert len(keys) == len(other) == 16
    assert not set(keys) & set(other)


def test_with_salt_is_a_new_namespace() -> None:
    salted = NAMESPACE.with_salt("tenant-a")
    assert salted.cache_salt == "tenant-a" and NAMESPACE.cache_salt is None
    assert salted.with_salt(None) == NAMESPACE
    assert len({NAMESPACE.root(), salted.root(), NAMESPACE.with_salt("").root()}) == 3


def test_namespace_rejects_a_bad_page_size_or_empty_field() -> None:
    with pytest.raises(ValueError, match="page_size"):
        replace(NAMESPACE, page_size=0)
    with pytest.raises(ValueError, match="model_id must not be empty"):
        replace(NAMESPACE, model_id="")


def test_a_trailing_partial_page_gets_no_key() -> None:
    tokens = list(range(10))
    assert page_keys(ROOT, tokens, 4) == page_keys(ROOT, tokens[:8], 4)
    assert len(page_keys(ROOT, tokens, 4)) == 2
    assert page_keys(ROOT, tokens[:3], 4) == []
    assert page_keys(ROOT, [], 4) == []


def test_parent_continues_a_chain() -> None:
    tokens = list(range(1000, 1030))
    full = page_keys(ROOT, tokens, 3)
    head = page_keys(ROOT, tokens[:12], 3)
    tail = page_keys(ROOT, tokens[12:], 3, parent=head[-1])
    assert head + tail == full


def test_token_id_range() -> None:
    assert page_keys(ROOT, [MAX_TOKEN_ID, 0], 2) == reference_keys(ROOT, [MAX_TOKEN_ID, 0], 2)
    with pytest.raises(ValueError, match=r"token id -1 is out of range \[0, 4294967295\]"):
        page_keys(ROOT, [5, -1], 1)
    with pytest.raises(ValueError, match="token id 4294967296 is out of range"):
        page_keys(ROOT, [MAX_TOKEN_ID + 1], 1)
    with pytest.raises(ValueError, match="out of range|must be in"):
        page_keys(ROOT, [2**70], 1)


def test_numpy_ids_give_the_same_keys() -> None:
    tokens = list(range(0, 4000, 7))
    assert page_keys(ROOT, np.array(tokens, dtype=np.int32), 16) == page_keys(ROOT, tokens, 16)


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="namespace_root must be 32 bytes"):
        page_keys(b"short", [1], 1)
    with pytest.raises(ValueError, match="parent must be 32 bytes"):
        page_keys(ROOT, [1], 1, parent=b"x" * 31)
    with pytest.raises(ValueError, match="page_size"):
        page_keys(ROOT, [1], 0)
    with pytest.raises(ValueError, match="flat"):
        page_keys(ROOT, [[1, 2]], 1)  # type: ignore[list-item]


def test_hex_names() -> None:
    key = page_keys(ROOT, [1, 2], 2)[0]
    assert key_hex(key) == key.hex() and len(key_hex(key)) == 64
    assert key_from_hex(key_hex(key)) == key
    for stray in ("", "ab" * 31, key.hex().upper(), key.hex() + ".tmp", "zz" * 32, "ab " * 21):
        assert key_from_hex(stray) is None
    with pytest.raises(ValueError, match="32 bytes"):
        key_hex(b"abc")


def write_model_dir(path: Path, config: str = '{"hidden_size": 8}') -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(config)
    (path / "model.safetensors").write_bytes(b"x" * 100)
    return path


def test_fingerprint_of_safetensors_files(tmp_path: Path) -> None:
    model = write_model_dir(tmp_path / "m")
    base = weights_fingerprint(model, None)
    assert base == weights_fingerprint(model, None) and len(base) == 64
    (model / "model.safetensors").write_bytes(b"x" * 101)
    assert weights_fingerprint(model, None) != base
    (model / "config.json").write_text('{"hidden_size": 16}')
    resized_and_reconfigured = weights_fingerprint(model, None)
    (model / "model-00002.safetensors").write_bytes(b"")
    assert weights_fingerprint(model, None) != resized_and_reconfigured


def test_fingerprint_prefers_the_index(tmp_path: Path) -> None:
    model = write_model_dir(tmp_path / "m")
    index = model / "model.safetensors.index.json"
    index.write_text('{"weight_map": {"a": "model.safetensors"}}')
    with_index = weights_fingerprint(model, None)
    (model / "model.safetensors").write_bytes(b"y" * 5)  # the index alone speaks for the files
    assert weights_fingerprint(model, None) == with_index
    index.write_text('{"weight_map": {"b": "model.safetensors"}}')
    assert weights_fingerprint(model, None) != with_index


def test_fingerprint_of_dummy_weights(tmp_path: Path) -> None:
    model = write_model_dir(tmp_path / "m")
    dummy = weights_fingerprint(model, 0)
    assert dummy != weights_fingerprint(model, None)
    assert dummy != weights_fingerprint(model, 1)
    assert dummy != weights_fingerprint(write_model_dir(tmp_path / "n", '{"hidden_size": 9}'), 0)
    assert weights_fingerprint(None, 0) != weights_fingerprint(None, 1)


def test_fingerprint_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="model directory or a dummy seed"):
        weights_fingerprint(None, None)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        weights_fingerprint(tmp_path, None)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"no \*.safetensors files"):
        weights_fingerprint(tmp_path, None)


def test_quantizing_at_load_changes_the_fingerprint(tmp_path: Path) -> None:
    model = write_model_dir(tmp_path / "m")
    assert weights_fingerprint(model, None, quantized_at_load="fp8") != \
        weights_fingerprint(model, None)
    assert weights_fingerprint(model, 0, quantized_at_load="fp8") != weights_fingerprint(model, 0)
