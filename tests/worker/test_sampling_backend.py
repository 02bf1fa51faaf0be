"""--sampling-backend {pytorch,flashinfer}: the registry, the choice on each machine, the startup
error naming what is missing, the pytorch backend drawing exactly the tokens the sampler drew
before it became a backend, and (on a GPU with FlashInfer) FlashInfer's draws against it."""

from __future__ import annotations

import importlib
import importlib.util
import math
from pathlib import Path

import pytest
import torch

from radixmesh.check_env import Report, missing_features
from radixmesh.make_model import make_model
from radixmesh.services.worker.config import SAMPLING_BACKEND_CHOICES, WorkerConfig
from radixmesh.services.worker.sampling import (
    SAMPLING_BACKENDS,
    PyTorchSampler,
    SamplingBatch,
    filter_probs,
    make_sampler,
    pick_sampling_backend,
)
from radixmesh.services.worker.sampling.flashinfer_backend import FlashInferSampler
from radixmesh.services.worker.worker_registry import build_worker
from radixmesh.shared.registry import UnknownNameError
from radixmesh.shared.sampling_params import SamplingParams as P

CPU = torch.device("cpu")
FLASHINFER_INSTALLED = importlib.util.find_spec("flashinfer") is not None


def test_the_registry_offers_what_the_flag_accepts():
    assert sorted(SAMPLING_BACKEND_CHOICES) == SAMPLING_BACKENDS.names()
    assert SAMPLING_BACKENDS.get("pytorch") is PyTorchSampler
    with pytest.raises(UnknownNameError, match="available: flashinfer, pytorch"):
        SAMPLING_BACKENDS.get("numpy")
    sampler = make_sampler("pytorch", 16, 2, CPU)
    assert isinstance(sampler, PyTorchSampler) and sampler.name == "pytorch"


def test_auto_takes_pytorch_on_a_cpu_and_in_deterministic_mode():
    assert pick_sampling_backend(None, CPU) == "pytorch"
    assert pick_sampling_backend(None, CPU, deterministic=True) == "pytorch"
    assert pick_sampling_backend("pytorch", CPU, deterministic=True) == "pytorch"
    if torch.cuda.is_available():
        expected = "flashinfer" if FLASHINFER_INSTALLED else "pytorch"
        assert pick_sampling_backend(None, torch.device("cuda")) == expected
        assert pick_sampling_backend(None, torch.device("cuda"), deterministic=True) == "pytorch"


@pytest.mark.skipif(FLASHINFER_INSTALLED, reason="flashinfer is installed here")
def test_flashinfer_without_the_package_is_a_startup_error_naming_it(tmp_path: Path):
    with pytest.raises(ValueError, match=r"--sampling-backend flashinfer needs the flashinfer "
                                         r"package, which is not installed \(pip install "
                                         r"flashinfer-python\)"):
        pick_sampling_backend("flashinfer", CPU)
    # The worker refuses before it loads any weight: the model directory is never read.
    config = WorkerConfig(model_path=str(tmp_path / "absent"), device="cpu",
                          sampling_backend="flashinfer")
    with pytest.raises(ValueError, match="--sampling-backend flashinfer needs the flashinfer"):
        build_worker(config)


def test_flashinfer_without_a_gpu_is_a_startup_error_naming_it(tmp_path: Path, monkeypatch):
    if not FLASHINFER_INSTALLED:  # an importable (empty) package of that name stands in
        (tmp_path / "flashinfer").mkdir()
        (tmp_path / "flashinfer" / "__init__.py").write_text("")
        monkeypatch.syspath_prepend(str(tmp_path))
        importlib.invalidate_caches()
    with pytest.raises(ValueError, match="--sampling-backend flashinfer needs a CUDA device; "
                                         "this worker runs on cpu"):
        pick_sampling_backend("flashinfer", CPU)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        FlashInferSampler(16, 2, CPU)


def test_deterministic_mode_keeps_the_pytorch_sampler():
    with pytest.raises(ValueError, match="--sampling-backend flashinfer cannot be combined"):
        WorkerConfig(sampling_backend="flashinfer", enable_deterministic_inference=True)
    assert WorkerConfig(sampling_backend="pytorch",
                        enable_deterministic_inference=True).sampling_backend == "pytorch"
    with pytest.raises(ValueError, match="not batch-invariant"):
        pick_sampling_backend("flashinfer", CPU, deterministic=True)


def test_check_env_names_the_flag_flashinfer_serves():
    report = Report(python="3", platform="x", cuda={}, gpus=[],
                    packages={"torch": "2", "triton": None, "flashinfer": None,
                              "huggingface_hub": "1", "opentelemetry-sdk": "1",
                              "opentelemetry-exporter-otlp": "1", "redis": "5"},
                    tools={"redis-server": "7", "docker": "27", "g++": "12"})
    affects = {item["missing"]: item["affects"] for item in missing_features(report)}
    assert "--sampling-backend flashinfer" in affects["flashinfer"]
    assert "--sampling-backend flashinfer" in affects["a CUDA device"]
    report.tools["g++"] = None
    assert "--enable-torch-compile" in {item["missing"]: item["affects"]
                                        for item in missing_features(report)}["g++ (a C++ compiler)"]


def test_a_worker_samples_with_pytorch_on_a_cpu(tmp_path: Path):
    model = make_model(tmp_path / "llama", "llama", num_layers=1)
    worker = build_worker(WorkerConfig(model_path=str(model), device="cpu", dtype="float32"))
    assert type(worker.sampler) is PyTorchSampler


# Tokens the sampler drew before it became the pytorch backend (recorded from
# services/worker/sampling/sampler.py as it was): six steps of the batch `_golden_case` builds.
GOLDEN_TOKENS = [[16, 47, 26, 13, 58, 51, 88, 44], [16, 1, 37, 38, 58, 19, 23, 44],
                 [16, 47, 37, 38, 58, 12, 90, 44], [16, 21, 37, 35, 58, 64, 3, 44],
                 [16, 27, 37, 78, 58, 62, 88, 44], [16, 27, 37, 13, 58, 42, 94, 44]]


def _golden_case() -> tuple[torch.Tensor, list[P]]:
    # Logits on a 1/8 grid: every softmax input is exact, so no platform's rounding can flip
    # a draw.
    generator = torch.Generator().manual_seed(5)
    logits = (torch.randn(8, 96, generator=generator) * 16).round() / 8
    params = [P(temperature=0), P(temperature=1.0), P(temperature=0.7, top_k=5),
              P(temperature=1.3, top_p=0.8), P(temperature=0.9, min_p=0.2, seed=11),
              P(temperature=1.0, top_k=12, top_p=0.9, seed=3),
              P(temperature=1.0, frequency_penalty=0.5, presence_penalty=0.3,
                repetition_penalty=1.2),
              P(temperature=0.8, top_k=1)]
    return logits, params


def test_the_pytorch_backend_draws_todays_tokens():
    logits, params = _golden_case()
    sampler = make_sampler("pytorch", 96, 8, CPU)
    for slot, param in enumerate(params):
        sampler.add_request(slot, param, [1, 2, 3, 40], [])
    drawn = []
    for position in range(len(GOLDEN_TOKENS)):
        batch = SamplingBatch.build(params, [100 + i for i in range(8)], [position] * 8,
                                    list(range(8)), "cpu")
        drawn.append(sampler.sample(logits, batch).tolist())
    assert drawn == GOLDEN_TOKENS


def test_the_batch_marks_sampled_rows_that_brought_their_own_seed():
    params = [P(seed=4), P(), P(temperature=0, seed=9), P(top_k=3, seed=0)]
    batch = SamplingBatch.build(params, [4, 77, 9, 0], [0] * 4, list(range(4)), "cpu")
    assert batch.own_seeds is not None and batch.own_seeds.tolist() == [True, False, False, True]
    assert not batch.all_own_seeds
    assert batch.top_ks.tolist()[3] == 3 and batch.slots.tolist() == [0, 1, 2, 3]
    seeded = SamplingBatch.build([P(seed=1), P(temperature=0)], [1, 5], [0, 0], [0, 1], "cpu")
    assert seeded.all_own_seeds and seeded.own_seeds.tolist() == [True, False]
    unseeded = SamplingBatch.build([P(), P(temperature=0, seed=2)], [1, 2], [0, 0], [0, 1], "cpu")
    assert unseeded.own_seeds is None and not unseeded.all_own_seeds


# ---- FlashInfer against the pytorch backend, on a GPU ---------------------------------------

needs_flashinfer = pytest.mark.skipif(not torch.cuda.is_available() or not FLASHINFER_INSTALLED,
                                      reason="needs a CUDA device and flashinfer")
VOCAB = 64
DRAWS = 20_000
# Two-sample chi-square (homogeneity) of two draws of DRAWS each, cells with fewer than 20
# draws in both together merged into one: under the null the statistic follows chi-square
# with cells - 1 degrees of freedom; the bound is its upper 0.01% point, so a correct kernel
# fails one run in 10,000, while a kernel ignoring top-p or top-k moves the statistic by
# hundreds.
P_VALUE_Z = 3.719  # the standard normal's upper 0.01% point


def chi_square_bound(degrees: int) -> float:
    """Wilson-Hilferty's approximation of chi-square's upper 0.01% point (within 1% here)."""
    scale = 2 / (9 * degrees)
    return degrees * (1 - scale + P_VALUE_Z * math.sqrt(scale)) ** 3


def homogeneity(a: torch.Tensor, b: torch.Tensor) -> tuple[float, int]:
    """(statistic, degrees of freedom) for token draws `a` and `b` of equal size."""
    count_a = torch.bincount(a.cpu(), minlength=VOCAB).double()
    count_b = torch.bincount(b.cpu(), minlength=VOCAB).double()
    total = count_a + count_b
    big = total >= 20
    cells_a = torch.cat([count_a[big], count_a[~big].sum().view(1)])
    cells_b = torch.cat([count_b[big], count_b[~big].sum().view(1)])
    keep = (cells_a + cells_b) > 0
    cells_a, cells_b = cells_a[keep], cells_b[keep]
    return float(((cells_a - cells_b) ** 2 / (cells_a + cells_b)).sum()), len(cells_a) - 1


def _logits(rows: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(VOCAB, generator=generator) * 2).expand(rows, VOCAB).cuda()


@pytest.mark.gpu
@needs_flashinfer
@pytest.mark.parametrize("param", [
    P(temperature=0.8), P(top_k=6), P(top_p=0.8, top_k=20, temperature=1.2),
    P(min_p=0.1, top_k=10), P(min_p=0.05, top_p=0.9)], ids=str)
def test_flashinfer_draws_follow_the_pytorch_backends_distribution(param: P):
    device = torch.device("cuda")
    logits = _logits(DRAWS, 7)
    params = [param] * DRAWS
    batch = SamplingBatch.build(params, list(range(DRAWS)), [0] * DRAWS, [0] * DRAWS, device)
    flashinfer = make_sampler("flashinfer", VOCAB, 1, device, seed=1).sample(logits, batch)
    pytorch = make_sampler("pytorch", VOCAB, 1, device).sample(logits, batch)
    # No draw outside what the filters keep (top-k's k largest, top-p's prefix, min-p's floor).
    kept = filter_probs(torch.softmax(logits[:1] / param.temperature, dim=-1),
                        SamplingBatch.build([param], [0], [0], [0], device))[0] > 0
    assert kept[flashinfer].all() and kept[pytorch].all()
    statistic, degrees = homogeneity(flashinfer, pytorch)
    assert degrees >= 2 and statistic < chi_square_bound(degrees)


@pytest.mark.gpu
@needs_flashinfer
def test_flashinfer_greedy_rows_take_the_argmax_and_seeded_rows_match_pytorch():
    device = torch.device("cuda")
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(8, VOCAB, generator=generator).cuda()
    params = [P(temperature=0), P(top_k=5), P(temperature=0.7, seed=21), P(top_k=1),
              P(temperature=0, repetition_penalty=1.5), P(top_p=0.9, seed=8), P(min_p=0.2),
              P(temperature=0, frequency_penalty=1.0)]
    samplers = {name: make_sampler(name, VOCAB, 8, device) for name in ("flashinfer", "pytorch")}
    for sampler in samplers.values():
        for slot, param in enumerate(params):
            sampler.add_request(slot, param, [1, 2, int(logits[slot].argmax())], [])
    for position in range(5):
        batch = SamplingBatch.build(params, [50 + i for i in range(8)], [position] * 8,
                                    list(range(8)), device)
        fi, pt = (samplers[name].sample(logits, batch) for name in ("flashinfer", "pytorch"))
        assert fi.dtype == torch.int64 and fi.shape == (8,)
        # Greedy and seeded rows (penalised the same way on both) draw the same tokens.
        for row in (0, 2, 3, 4, 5, 7):
            assert fi[row] == pt[row], (position, row)
    greedy = SamplingBatch.build([P(temperature=0)] * 8, [0] * 8, [0] * 8, [0] * 8, device)
    fresh = make_sampler("flashinfer", VOCAB, 1, device)
    assert torch.equal(fresh.sample(logits, greedy), logits.argmax(dim=-1))
