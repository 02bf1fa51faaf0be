"""The L2 host pool in real shared memory, mapped by real second processes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from radixmesh.shared.host_pool import (
    SHM_DIR,
    HostPool,
    HostPoolError,
    HostPoolLayout,
    pin,
)

LAYOUT = HostPoolLayout(num_slots=4, num_layers=2, page_size=4, num_kv_heads=2, head_dim=8,
                        dtype="float32")
PATTERN = bytes(range(256)) * (LAYOUT.bytes_per_slot // 256)

# Maps the pool by name, fills slot N through the tensor view and slot N+1 through write_slot.
ATTACHER = """
import json, sys
import torch
from radixmesh.shared.host_pool import HostPool, HostPoolLayout
name, layout, slot = sys.argv[1], HostPoolLayout(**json.loads(sys.argv[2])), int(sys.argv[3])
pool = HostPool.attach(name, layout)
tensor = pool.tensor()
tensor[slot] = torch.arange(tensor[slot].numel(), dtype=tensor.dtype).view(tensor[slot].shape)
del tensor
pool.write_slot(slot + 1, bytes(range(256)) * (layout.bytes_per_slot // 256))
pool.close()
"""

# The service's side in a process of its own, so its resource tracker's last words are seen.
CREATOR = """
import subprocess, sys
import torch
from radixmesh.shared.host_pool import HostPool, HostPoolLayout
import json
layout_json, attacher = sys.argv[1], sys.argv[2]
with HostPool.create(None, HostPoolLayout(**json.loads(layout_json))) as pool:
    child = subprocess.run([sys.executable, "-c", attacher, pool.name, layout_json, "0"],
                           capture_output=True, text=True)
    sys.stderr.write(child.stderr)
    assert child.returncode == 0
    tensor = pool.tensor()
    assert float(tensor[0].flatten()[5]) == 5.0
    del tensor
print(pool.name)
"""


def unique_name() -> str:
    return f"rmx-test-{uuid.uuid4().hex[:12]}"


def run_python(code: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # cwd away from the checkout: its top-level folders must not shadow installed packages.
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def assert_no_tracker_complaints(stderr: str) -> None:
    for word in ("resource_tracker", "leaked", "Traceback"):
        assert word not in stderr, stderr


def test_layout_arithmetic() -> None:
    layout = HostPoolLayout(num_slots=3, num_layers=32, page_size=16, num_kv_heads=8,
                            head_dim=128, dtype="bfloat16")
    assert layout.kv_page_bytes == 16 * 8 * 128 * 2 == 32768
    assert layout.bytes_per_slot == 32 * 2 * 32768  # 2 MiB: 128 KiB of KV per token
    assert layout.total_bytes == 3 * layout.bytes_per_slot
    assert layout.shape == (3, 1, 32, 2, 16, 8, 128)
    assert HostPoolLayout(**{**asdict(layout), "dtype": "float32"}).kv_page_bytes == 65536
    assert HostPoolLayout(**{**asdict(layout), "dtype": "float8_e4m3fn"}).kv_page_bytes == 16384
    # Two tensor-parallel ranks of 4 KV heads each: the same 2 MiB slot, rank after rank.
    split = HostPoolLayout(**{**asdict(layout), "num_kv_heads": 4, "tp_size": 2})
    assert split.bytes_per_slot == layout.bytes_per_slot
    assert split.shape == (3, 2, 32, 2, 16, 4, 128)


def test_layout_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="num_slots must be >= 1, got 0"):
        HostPoolLayout(**{**asdict(LAYOUT), "num_slots": 0})
    with pytest.raises(ValueError, match="unsupported dtype 'int4'; supported: float32"):
        HostPoolLayout(**{**asdict(LAYOUT), "dtype": "int4"})


def test_a_second_process_writes_slots(tmp_path: Path) -> None:
    with HostPool.create(unique_name(), LAYOUT) as pool:
        child = run_python(ATTACHER, pool.name, json.dumps(asdict(LAYOUT)), "1", cwd=tmp_path)
        assert child.returncode == 0, child.stderr
        assert_no_tracker_complaints(child.stderr)
        tensor = pool.tensor()
        expected = torch.arange(tensor[1].numel(), dtype=torch.float32).view(tensor[1].shape)
        assert torch.equal(tensor[1], expected)
        assert not tensor[0].any() and not tensor[3].any()
        with pool.slot_bytes(1) as view:
            assert bytes(view) == expected.numpy().tobytes()
        with pool.slot_bytes(2) as view:
            assert bytes(view) == PATTERN
        assert tensor[2].numpy().tobytes() == PATTERN
        del tensor
        HostPool.attach(pool.name, LAYOUT).close()  # the attacher's exit left the name alone


def test_no_leaks_and_no_tracker_warnings_across_processes(tmp_path: Path) -> None:
    creator = run_python(CREATOR, json.dumps(asdict(LAYOUT)), ATTACHER, cwd=tmp_path)
    assert creator.returncode == 0, creator.stderr
    assert_no_tracker_complaints(creator.stderr)
    with pytest.raises(HostPoolError, match="no shared memory"):
        HostPool.attach(creator.stdout.strip(), LAYOUT)


def test_views_share_the_memory() -> None:
    with HostPool.create(None, LAYOUT) as pool:
        first, second = pool.tensor(), pool.tensor()
        assert first.shape == LAYOUT.shape and first.dtype == torch.float32
        assert first.data_ptr() == second.data_ptr()
        first[2, 0, 1, 1, 3, 0, 5] = 7.0
        assert second[2, 0, 1, 1, 3, 0, 5] == 7.0
        pool.write_slot(3, memoryview(bytearray(PATTERN)))
        assert first[3].numpy().tobytes() == PATTERN
        with pool.slot_bytes(2) as view:
            view[0:4] = torch.tensor([1.5]).numpy().tobytes()
        assert first[2, 0, 0, 0, 0, 0, 0] == 1.5
        del first, second


def test_slot_bounds_and_sizes() -> None:
    with HostPool.create(None, LAYOUT) as pool:
        for slot in (-1, LAYOUT.num_slots):
            with pytest.raises(IndexError, match=f"slot {slot} is out of range"):
                pool.slot_bytes(slot)
        with pytest.raises(ValueError, match="a slot holds 1024 bytes, got 1023"):
            pool.write_slot(0, PATTERN[:-1])


def test_attach_fails_clearly() -> None:
    with pytest.raises(HostPoolError, match="no shared memory 'rmx-test-absent'"):
        HostPool.attach("rmx-test-absent", LAYOUT)
    with HostPool.create(None, LAYOUT) as pool:
        bigger = HostPoolLayout(**{**asdict(LAYOUT), "num_slots": 5})
        with pytest.raises(HostPoolError, match=r"holds 4096 bytes; the layout .* needs 5120"):
            HostPool.attach(pool.name, bigger)


def test_a_taken_name_is_refused() -> None:
    with HostPool.create(unique_name(), LAYOUT) as pool:
        with pytest.raises(HostPoolError, match="already exists"):
            HostPool.create(pool.name, LAYOUT)


@pytest.mark.skipif(not SHM_DIR.is_dir(), reason="no /dev/shm on this system")
def test_a_pool_larger_than_shared_memory_is_refused() -> None:
    name = unique_name()
    num_slots = shutil.disk_usage(SHM_DIR).free // LAYOUT.bytes_per_slot + 1
    with pytest.raises(HostPoolError, match="--shm-size"):
        HostPool.create(name, HostPoolLayout(**{**asdict(LAYOUT), "num_slots": num_slots}))
    assert not (SHM_DIR / name).exists()


def test_close_removes_the_name() -> None:
    pool = HostPool.create(unique_name(), LAYOUT)
    pool.close()
    pool.close()
    with pytest.raises(HostPoolError, match="no shared memory"):
        HostPool.attach(pool.name, LAYOUT)
    with pytest.raises(HostPoolError, match="is closed"):
        pool.tensor()


def test_close_refuses_while_memory_is_in_use() -> None:
    pool = HostPool.create(unique_name(), LAYOUT)
    tensor = pool.tensor()[1:2]  # a slice keeps the mapping alive just as well
    with pytest.raises(HostPoolError, match="still has live tensors or views"):
        pool.close()
    tensor[0, 0, 0, 0, 0, 0] = 2.0  # still mapped: no dangling memory
    with pytest.raises(HostPoolError, match="is closed"):
        pool.slot_bytes(0)
    del tensor
    pool.close()
    with pytest.raises(HostPoolError, match="no shared memory"):
        HostPool.attach(pool.name, LAYOUT)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only path")
def test_pin_is_a_no_op_without_cuda() -> None:
    with HostPool.create(None, LAYOUT) as pool:
        assert pool.pin() is False
        tensor = pool.tensor()
        assert pin(tensor) is None
        del tensor


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_pinned_pool_copies_to_and_from_the_gpu() -> None:
    with HostPool.create(None, LAYOUT) as pool:
        assert pool.pin() and pool.pin()  # a second pin is a no-op
        host = pool.tensor()
        assert host.is_pinned()
        host[1].fill_(3.0)
        device = host.to("cuda", non_blocking=True)
        device[2].fill_(4.0)
        host.copy_(device, non_blocking=True)
        torch.cuda.synchronize()
        assert bool((host[1] == 3.0).all()) and bool((host[2] == 4.0).all())
        del host, device
