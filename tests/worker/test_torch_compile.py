"""--enable-torch-compile: the decode forward compiled by inductor gives the eager model's
greedy tokens and its logits within float32 noise (in-process engine, tiny model, CPU), with one
graph and no graph break; small decode batches run compiled, larger ones and prefill eagerly;
nonsense is refused; the flags reach the worker through `radixmesh up`. On a GPU the compiled
forward is what the CUDA graphs capture.

Compiling on two CPU cores is the slow part (~10 s for the two graphs a dynamic batch dimension
needs): one compiled engine serves the whole module.
"""

from __future__ import annotations

import argparse
import logging
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

from radixmesh import launcher
from radixmesh.engine import Engine
from radixmesh.launcher.mesh_plan import config_to_argv
from radixmesh.make_model import make_model
from radixmesh.services.scheduler.config import SchedulerConfig
from radixmesh.services.worker.config import WorkerConfig
from radixmesh.shared.cli_args import add_config_arguments, config_from_args

MAX_BS = 4       # decode batches of 1..4 rows compiled, of 5 and 6 eager
NUM_REQUESTS = 6
# Inductor reassociates float32 sums (RMSNorm's mean, fused elementwise chains): over the tiny
# model's layers the logits moved by a few ulps of the largest one (4 seen). The bound allows
# ~80 ulps of float32 (2**-23 each) relative to the largest logit.
LOGITS_RELATIVE_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("compile") / "llama", "llama")


def make_engine(model_dir: Path, **worker: object) -> Engine:
    return Engine(WorkerConfig(model_path=str(model_dir), device="cpu", dtype="float32",
                               **worker), SchedulerConfig())


class Run:
    """One generation: each request's tokens, and each step's sampled rids and logits."""

    def __init__(self, engine: Engine) -> None:
        self.steps: list[tuple[list[str], torch.Tensor]] = []
        engine.runner.logits_observer = lambda rids, logits: self.steps.append(
            (list(rids), logits.detach().clone()))
        rng = random.Random(3)
        bodies = [{"input_ids": [rng.randrange(5, 500) for _ in range(4 + 3 * i)],
                   "max_new_tokens": 3 + 2 * i, "temperature": 0, "ignore_eos": True}
                  for i in range(NUM_REQUESTS)]  # staggered ends: batches of 6 down to 1
        self.tokens = [completion.token_ids for completion in engine.generate(bodies)]
        engine.runner.logits_observer = None


@pytest.fixture(scope="module")
def compiled_engine(model_dir: Path) -> Iterator[tuple[Engine, int, int]]:
    """The compiled engine, with the graph breaks and graphs Dynamo counted while building it."""
    breaks = sum(counters["graph_break"].values())
    graphs = counters["stats"]["unique_graphs"]
    engine = make_engine(model_dir, enable_torch_compile=True, torch_compile_max_bs=MAX_BS)
    yield (engine, sum(counters["graph_break"].values()) - breaks,
           counters["stats"]["unique_graphs"] - graphs)
    assert not engine.has_work and engine.runner.num_requests == 0


def test_compiled_decode_matches_eager_tokens_and_logits(model_dir, compiled_engine):
    engine, graph_breaks, graphs = compiled_engine
    compiled = engine.runner.compiled
    assert compiled is not None and not compiled.static_shapes  # no CUDA graphs on a CPU
    assert graph_breaks == 0 and graphs == 2  # size 1, and every size >= 2
    assert compiled.compiled_sizes == [1, 2] and compiled.compile_seconds > 0
    calls_before, graphs_before = compiled.calls, counters["stats"]["unique_graphs"]

    got = Run(engine)
    eager = make_engine(model_dir)
    assert eager.runner.compiled is None
    expected = Run(eager)

    assert got.tokens == expected.tokens
    assert [len(ids) for ids in got.tokens] == [3 + 2 * i for i in range(NUM_REQUESTS)]
    assert [rids for rids, _ in got.steps] == [rids for rids, _ in expected.steps]
    for (_, logits), (_, reference) in zip(got.steps, expected.steps, strict=True):
        bound = LOGITS_RELATIVE_TOLERANCE * reference.abs().max().item()
        assert (logits - reference).abs().max().item() <= bound
    # The first step prefills every prompt (eager); each later one decodes every running
    # request, compiled exactly when at most MAX_BS of them remain; nothing recompiled.
    decode_sizes = [len(rids) for rids, _ in got.steps[1:]]
    assert max(decode_sizes) == NUM_REQUESTS and min(decode_sizes) == 1
    assert compiled.calls - calls_before == sum(size <= MAX_BS for size in decode_sizes)
    assert counters["stats"]["unique_graphs"] == graphs_before


def test_startup_log_says_what_was_compiled_and_how_long(compiled_engine, caplog):
    engine, _, _ = compiled_engine
    with caplog.at_level(logging.INFO, logger="radixmesh.services.worker.torch_compile"):
        engine.runner.compiled.log_compiled()
    [line] = [record.getMessage() for record in caplog.records]
    assert line.startswith(f"torch.compile: decode forward compiled for batch sizes 1..{MAX_BS} "
                           "(dynamic) in ")
    assert line.endswith(" s (mode default)")


def test_nonsense_and_conflicting_flags_are_refused():
    with pytest.raises(ValueError, match="--torch-compile-max-bs must be >= 1"):
        WorkerConfig(enable_torch_compile=True, torch_compile_max_bs=0)
    with pytest.raises(ValueError, match="cannot be combined with --enable-deterministic"):
        WorkerConfig(enable_torch_compile=True, enable_deterministic_inference=True)
    assert WorkerConfig().enable_torch_compile is False
    assert WorkerConfig().torch_compile_max_bs == 32


def test_up_shows_the_flags_and_passes_them_to_the_worker():
    parser = argparse.ArgumentParser()
    launcher.add_cli_args(parser)
    help_text = " ".join(parser.format_help().split())
    assert "--enable-torch-compile" in help_text and "--torch-compile-max-bs" in help_text
    assert "--sampling-backend {pytorch,flashinfer}" in help_text
    config = WorkerConfig(enable_torch_compile=True, torch_compile_max_bs=8,
                          sampling_backend="pytorch")
    argv = config_to_argv(config)
    assert argv == ["--enable-torch-compile", "--torch-compile-max-bs", "8",
                    "--sampling-backend", "pytorch"]
    worker_parser = argparse.ArgumentParser()
    add_config_arguments(worker_parser, WorkerConfig)
    assert config_from_args(WorkerConfig, worker_parser.parse_args(argv)) == config


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graphs_capture_the_compiled_forward(model_dir):
    """Graphs up to 8 rows, the compiled forward up to 4: sizes 1, 2, 4 are compiled (one
    static graph each) and captured, 8 is captured eagerly; greedy tokens as without the flag."""
    def engine(**flags: object) -> Engine:
        return Engine(WorkerConfig(model_path=str(model_dir), device="cuda", dtype="float32",
                                   cuda_graph_max_bs=8, max_total_tokens=8192, **flags),
                      SchedulerConfig())

    compiled_engine = engine(enable_torch_compile=True, torch_compile_max_bs=MAX_BS)
    compiled = compiled_engine.runner.compiled
    assert compiled is not None and compiled.static_shapes
    assert compiled_engine.runner.graph_runner.batch_sizes == [1, 2, 4, 8]
    assert compiled.compiled_sizes == [1, 2, 4]
    got = Run(compiled_engine)
    assert got.tokens == Run(engine()).tokens
    assert compiled.calls == 3 * 3  # per size: two warm-up runs and the capture, no more
    del compiled_engine
    torch.cuda.empty_cache()

