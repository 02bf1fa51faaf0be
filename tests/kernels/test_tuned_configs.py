"""Swept tilings (kernels/tuned_configs.py): what a sweep writes is what the kernels read back,
per device and weight shape, and anything the table lacks keeps the kernel's default."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from radixmesh.kernels.tuned_configs import device_slug, table_path, tuned, write_table


@dataclass(frozen=True)
class Tiling:
    block_n: int = 64
    split_k: int = 4
    num_warps: int = 4


def test_a_swept_table_is_read_back_per_shape(tmp_path: Path) -> None:
    device = "NVIDIA H100 80GB HBM3"
    path = write_table("demo-kernel", device, {(6144, 4096): Tiling(block_n=32, split_k=2)},
                       {"commit": "abc1234", "command": "bench --sweep"}, tmp_path)
    assert path == tmp_path / "demo-kernel-nvidia-h100-80gb-hbm3.json"
    body = json.loads(path.read_text())
    assert body["device"] == device and body["commit"] == "abc1234"
    assert body["configs"] == {"6144,4096": {"block_n": 32, "split_k": 2, "num_warps": 4}}

    assert tuned("demo-kernel", device, 6144, 4096, Tiling(), tmp_path) == Tiling(32, 2, 4)
    # Another shape, another device, another kernel: the default.
    assert tuned("demo-kernel", device, 4096, 4096, Tiling(), tmp_path) == Tiling()
    assert tuned("demo-kernel", "NVIDIA H200", 6144, 4096, Tiling(), tmp_path) == Tiling()
    assert tuned("other-kernel", device, 6144, 4096, Tiling(), tmp_path) == Tiling()


def test_fields_the_tiling_does_not_have_are_ignored(tmp_path: Path) -> None:
    path = table_path("old-kernel", "NVIDIA H200", tmp_path)
    path.write_text(json.dumps({"configs": {"8,16": {"split_k": 8, "retired_field": 1}}}))
    assert tuned("old-kernel", "NVIDIA H200", 8, 16, Tiling(), tmp_path) == Tiling(split_k=8)
    assert device_slug("NVIDIA H200") == "nvidia-h200"
