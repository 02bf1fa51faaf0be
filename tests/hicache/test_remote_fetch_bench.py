"""`radixmesh bench --workload cross-node` on CPU, scaled down: it starts its Redis and its
meshes itself, runs node B in all four modes and records each with the fetch and break-even
bandwidths."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from radixmesh.make_model import make_model
from tests.hicache.redis_server import NEEDS_REDIS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400),
              NEEDS_REDIS]
NUM_PROMPTS = 2


def test_the_cpu_bench_runs_all_four_modes(tmp_path: Path) -> None:
    model = make_model(tmp_path / "llama", "llama")
    results = tmp_path / "results"
    argv = [sys.executable, "-P", "-m", "radixmesh.cli", "bench", "--workload", "cross-node",
            "--model-path", str(model), "--device", "cpu", "--dtype", "float32",
            "--page-size", "4", "--input-len", "64", "--num-prompts", str(NUM_PROMPTS),
            "--no-progress", "--output-dir", str(results)]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=380, cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    (path,) = results.glob("cross-node-mesh-*.json")
    figures = json.loads(path.read_text())["metrics"]
    modes = figures["modes"]
    assert set(modes) == {"fetch", "recompute", "auto", "index_off"}
    for values in modes.values():
        assert values["completed"] == NUM_PROMPTS and values["mean_ttft_s"] > 0
    # 64 prompt tokens: 15 full pages of 4 before the last token, which is always computed.
    assert modes["fetch"]["fetched_fraction"] == pytest.approx(60 / 64)
    assert modes["recompute"]["fetched_fraction"] == modes["index_off"]["fetched_fraction"] == 0
    assert figures["fetch_bandwidth_gbps"] > 0 and figures["break_even_bandwidth_gbps"] > 0
    assert "break-even bandwidth" in run.stdout
