"""--kv-cache-dtype fp8_e4m3 / fp8_e5m2: the KV pool stores FP8 with per-tensor scales, the
torch backend reads it dequantized (CPU), the logits stay within the error e4m3 implies, the
same memory holds twice the tokens, and FP8 pages go to host memory and files and come back
(through a real tiered mesh, slow)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from radixmesh.engine import Engine
from radixmesh.make_model import make_model
from radixmesh.services.worker.attention.torch_backend import TorchAttentionBackend
from radixmesh.services.worker.config import WorkerConfig
from radixmesh.services.worker.forward_batch import ForwardBatch, ForwardMode
from radixmesh.services.worker.kv_pool import KVPool, resolve_kv_dtype
from radixmesh.services.worker.loader import load_model
from radixmesh.services.worker.memory import kv_pool_tokens
from radixmesh.services.worker.model_config import ModelConfig
from tests.quantization.common import e4m3_rms_error, random_tokens, relative_errors

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2
PROMPT_LEN = 48


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("kv-dtype") / "llama", "llama", seed=1)


def test_the_pool_stores_fp8_and_reads_it_back_dequantized() -> None:
    pool = KVPool(4, 2, 2, 2, 8, E4M3, "cpu", compute_dtype=torch.float32,
                  k_scales=[1.0, 0.5], v_scales=[1.0, 2.0])
    generator = torch.Generator().manual_seed(0)
    k = torch.randn(3, 2, 8, generator=generator)
    v = torch.randn(3, 2, 8, generator=generator)
    k[0, 0, 0], v[0, 0, 0] = 1000.0, -1e6  # beyond e4m3's 448: clamped, never NaN
    slots = torch.tensor([2, 5, 7])
    for layer in (0, 1):
        pool.store(layer, slots, k, v)
        k_scale, v_scale = pool.k_scales[layer], pool.v_scales[layer]
        expected_k = (k / k_scale).clamp(-448, 448).to(E4M3).float() * k_scale
        expected_v = (v / v_scale).clamp(-448, 448).to(E4M3).float() * v_scale
        assert torch.equal(pool.read_keys(layer, slots, torch.float32), expected_k)
        assert torch.equal(pool.read_values(layer, slots, torch.float32), expected_v)
        assert pool.keys(layer).dtype == E4M3 and not pool.keys(layer).float().isnan().any()
    assert pool.dtype_name == "float8_e4m3fn" and pool.is_fp8
    e5m2 = KVPool(4, 2, 1, 2, 8, E5M2, "cpu", compute_dtype=torch.bfloat16)
    e5m2.store(0, slots, k, v)
    assert e5m2.read_values(0, slots, torch.float32).isfinite().all()  # not rounded to inf


def test_flag_names_resolve_and_bad_ones_are_refused() -> None:
    assert resolve_kv_dtype("auto", torch.bfloat16) == torch.bfloat16
    assert resolve_kv_dtype("fp8_e4m3", torch.bfloat16) == E4M3
    assert resolve_kv_dtype("fp8_e5m2", torch.float32) == E5M2
    with pytest.raises(ValueError, match="--kv-cache-dtype"):
        WorkerConfig(kv_cache_dtype="int4")
    with pytest.raises(ValueError, match="compute_dtype"):
        KVPool(1, 1, 1, 1, 8, E4M3, "cpu")


def test_the_same_memory_holds_twice_the_tokens() -> None:
    """The sizing counts the cache's own bytes: at Llama-3.1-8B's shape (32 layers, 8 KV heads
    of 128) bf16 takes 128 KiB per token and FP8 64 KiB, so the CPU budget of 1 GiB holds
    8,192 and 16,384 tokens."""
    shape = (32, 8, 128)
    tokens = {dtype: kv_pool_tokens(None, KVPool.bytes_per_token(*shape, dtype),
                                    torch.device("cpu"), 0.85)
              for dtype in (torch.bfloat16, E4M3, E5M2)}
    assert KVPool.bytes_per_token(*shape, torch.bfloat16) == 128 * 1024
    assert tokens[torch.bfloat16] == 8192
    assert tokens[E4M3] == tokens[E5M2] == 2 * tokens[torch.bfloat16]


@torch.no_grad()
def prefill(model: torch.nn.Module, config: ModelConfig, tokens: list[int],
            kv_dtype: torch.dtype) -> tuple[torch.Tensor, KVPool]:
    """Next-token logits [len(tokens), vocab] of one prefill with the KV cache in `kv_dtype`
    (the torch backend reads back what was stored for every token, earlier ones included)."""
    n = len(tokens)
    pool = KVPool(n + 1, 1, config.num_hidden_layers, config.num_key_value_heads,
                  config.head_dim, kv_dtype, "cpu", compute_dtype=torch.float32)
    backend = TorchAttentionBackend(pool)
    pages = torch.arange(1, n + 1, dtype=torch.int32)  # page 0 is padding
    batch = ForwardBatch(
        mode=ForwardMode.EXTEND, input_ids=torch.tensor(tokens), positions=torch.arange(n),
        out_cache_loc=pages.long(), seq_lens=torch.tensor([n], dtype=torch.int32),
        extend_lens=torch.tensor([n], dtype=torch.int32),
        extend_starts=torch.tensor([0], dtype=torch.int32), page_table=pages[None, :],
        logits_indices=torch.arange(n), seq_lens_cpu=[n], extend_lens_cpu=[n], num_extends=1,
        attn_backend=backend, kv_pool=pool)
    backend.prepare(batch)
    return model.compute_logits(model(batch)[batch.logits_indices]), pool


def test_fp8_kv_logits_stay_within_the_error_e4m3_implies(model_dir: Path) -> None:
    """Relative logit error with an FP8 cache against the fp32 cache, same fp32 model.

    Each layer rounds two tensors, K and V, element by element, with e4m3's relative RMS error
    eps = 0.0265 (derived in tests/quantization/common.e4m3_rms_error; it holds for values in
    e4m3's normal range, [2^-6, 448] at scale 1, checked below). V's error reaches the
    attention output through a convex combination of rows, so at most eps relative (less as
    the weights spread); K's error moves the scores by eps relative and the softmax weights by
    as much to first order. Two such errors per layer add in quadrature along the residual
    stream: eps * sqrt(2 L), 0.053 for two layers, a first-order estimate the mean must meet
    within [0.5, 1.5]x (the FP8 weight tests' bar; measured ~0.8x) and the worst token within
    3.5x. e5m2 has one mantissa bit less, twice eps: its error must come out clearly larger,
    so the bound measures the format's precision and can fail.
    """
    config = ModelConfig.from_pretrained(model_dir)
    model = load_model(config, model_dir, dtype="float32")
    tokens = random_tokens(config.vocab_size, PROMPT_LEN, seed=0)
    reference, _ = prefill(model, config, tokens, torch.float32)
    e4m3_logits, pool = prefill(model, config, tokens, E4M3)
    stored = torch.cat([pool.keys(layer)[1:].float().abs().flatten()
                        for layer in range(pool.num_layers)])
    assert stored.max() < 448 and stored.median() > 2.0 ** -6

    estimate = e4m3_rms_error() * math.sqrt(2 * config.num_hidden_layers)
    errors = relative_errors(e4m3_logits, reference)
    assert 0.5 * estimate <= errors.mean() <= 1.5 * estimate
    assert errors.max() <= 3.5 * estimate
    e5m2_errors = relative_errors(prefill(model, config, tokens, E5M2)[0], reference)
    assert e5m2_errors.mean() > 1.4 * errors.mean()
    assert e5m2_errors.mean() <= 1.5 * 2 * estimate


def test_the_engine_serves_from_an_fp8_cache_and_says_so(model_dir: Path) -> None:
    engine = Engine(WorkerConfig(model_path=str(model_dir), device="cpu",
                                 kv_cache_dtype="fp8_e4m3"))
    assert engine.info.kv_dtype == "float8_e4m3fn"
    assert engine.runner.kv_pool.compute_dtype == engine.runner.dtype
    body = {"input_ids": random_tokens(engine.info.vocab_size, 20, seed=3),
            "max_new_tokens": 8, "temperature": 0, "ignore_eos": True}
    first, again = engine.generate([body]), engine.generate([body])  # again: from the cache
    assert len(first[0].token_ids) == 8
    assert again[0].token_ids == first[0].token_ids
    assert again[0].usage.cached_tokens > 0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_fp8_pages_round_trip_through_host_memory_and_files(model_dir: Path,
                                                           tmp_path: Path) -> None:
    """A tiered mesh with an FP8 cache gives the greedy output of the same mesh without the
    hierarchical cache, while its prompts are served from L2 and L3: the host pool and the
    files hold FP8 pages (a quarter of the fp32 pages' bytes), copied as bytes both ways."""
    from tests.hicache.l3_files import page_files
    from tests.hicache.mesh_runs import BASE_FLAGS, PAGE_SIZE, converse, tiered_mesh
    from tests.mesh.conftest import start_mesh

    fp8 = ("--kv-cache-dtype", "fp8_e4m3")
    with start_mesh(model_dir, *BASE_FLAGS, *fp8, worker="model") as mesh:
        reference = converse(mesh)
    with tiered_mesh(model_dir, tmp_path / "l3", *fp8) as tiered:
        run = converse(tiered.mesh, tiered.hicache_metrics_url)
    assert run.outputs == reference.outputs
    assert run.tiers["host"] > 0 and run.tiers["storage"] > 0, run.tiers
    assert run.computed_prefill < reference.computed_prefill
    assert run.alive and run.followup.output == reference.outputs[(0, 1)]
    config = ModelConfig.from_pretrained(model_dir)
    page_bytes = PAGE_SIZE * KVPool.bytes_per_token(
        config.num_hidden_layers, config.num_key_value_heads, config.head_dim, E4M3)
    sizes = {file.stat().st_size for file in page_files(tmp_path / "l3").values()}
    assert sizes and all(page_bytes <= size < 2 * page_bytes for size in sizes), sizes


def test_flashinfer_refuses_an_fp8_cache_of_narrow_heads_before_it_runs() -> None:
    """Its FP8 prefill has no tiles below 64-wide heads and would fail at the first request."""
    from radixmesh.services.worker.attention.flashinfer_backend import FlashInferAttentionBackend

    narrow = KVPool(4, 2, 1, 2, 16, E4M3, "cpu", compute_dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="head_dim >= 64.*--attention-backend triton"):
        FlashInferAttentionBackend(narrow)


def first_logits(model_dir: Path, **flags: object) -> torch.Tensor:
    """The prefill logits of one prompt on the GPU, through the engine's worker."""
    engine = Engine(WorkerConfig(model_path=str(model_dir), device="cuda",
                                 max_total_tokens=4096, cuda_graph_max_bs=4, **flags))
    rows: list[torch.Tensor] = []
    engine.runner.logits_observer = lambda rids, logits: rows.append(logits.float().cpu())
    engine.generate([{"input_ids": random_tokens(engine.info.vocab_size, 300, seed=4),
                      "max_new_tokens": 4, "temperature": 0, "ignore_eos": True}])
    return torch.cat(rows)


@pytest.mark.gpu
@pytest.mark.parametrize("backend,dtype", [("triton", "float32"), ("triton", "bfloat16"),
                                           ("flashinfer", "bfloat16")])
def test_gpu_backends_read_the_fp8_cache_as_the_torch_backend_does(
        model_dir: Path, tmp_path: Path, backend: str, dtype: str) -> None:
    """Triton converts FP8 on load, FlashInfer reads it natively: both attend over the very
    bytes the torch backend dequantizes (the store is shared), so their logits agree to the
    compute dtype's accuracy, prefill and decode (graphs included)."""
    from radixmesh.services.worker.attention import ATTENTION_BACKENDS

    if backend not in ATTENTION_BACKENDS:
        pytest.skip(f"needs a CUDA device with {backend}")
    if backend == "flashinfer":  # FP8 needs heads of 64 there (FP8_MIN_HEAD_DIM)
        model_dir = make_model(tmp_path / "wide-heads", "llama", seed=1, hidden_size=256,
                               num_heads=4, num_kv_heads=2)
    flags = dict(kv_cache_dtype="fp8_e4m3", dtype=dtype, page_size=16)
    expected = first_logits(model_dir, attention_backend="torch", **flags)
    got = first_logits(model_dir, attention_backend=backend, **flags)
    tolerance = 1e-4 if dtype == "float32" else 2e-2
    assert relative_errors(got, expected).max() < tolerance
