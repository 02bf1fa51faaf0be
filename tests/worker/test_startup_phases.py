"""The worker says where its start-up time went, phase by phase."""

from __future__ import annotations

import logging
import re
import time

import torch

from radixmesh.make_model import make_model
from radixmesh.services.worker.config import WorkerConfig
from radixmesh.services.worker.model_runner import ModelRunner
from radixmesh.services.worker.startup_phases import StartupPhases


def test_laps_add_up_to_the_total_and_repeat_phases_accumulate() -> None:
    phases = StartupPhases(torch.device("cpu"))
    time.sleep(0.02)
    phases.lap("weights")
    phases.lap("warm-up")
    time.sleep(0.01)
    phases.lap("weights")
    assert list(phases.seconds) == ["weights", "warm-up"]
    assert phases.seconds["weights"] >= 0.03
    total = float(re.match(r"ready in ([\d.]+) s: weights [\d.]+ s, warm-up [\d.]+ s$",
                           phases.summary()).group(1))
    assert abs(total - sum(phases.seconds.values())) < 0.1


def test_a_worker_logs_its_start_up_phases(tmp_path, caplog) -> None:
    model_dir = make_model(tmp_path / "llama", "llama")
    with caplog.at_level(logging.INFO, logger="radixmesh.services.worker.model_runner"):
        ModelRunner(WorkerConfig(model_path=str(model_dir), device="cpu"), model_dir)
    [line] = [r.getMessage() for r in caplog.records if "ready in" in r.getMessage()]
    assert re.fullmatch(r"worker ready in [\d.]+ s: weights [\d.]+ s, KV pool [\d.]+ s, "
                        r"set-up [\d.]+ s, warm-up: forward [\d.]+ s, warm-up: sampler [\d.]+ s, "
                        r"CUDA graphs [\d.]+ s", line)
