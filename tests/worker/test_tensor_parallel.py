"""A model split over 2 and 4 tensor-parallel ranks (real processes, gloo) computes the logits
of the one-device model: from a checkpoint (each rank reading only its cut) and from dummy
weights (drawn by name, so every group size holds the same model), through a prefill and a
second chunk that reads the first from the KV cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from radixmesh.make_model import make_model
from radixmesh.services.worker.attention.torch_backend import TorchAttentionBackend
from radixmesh.services.worker.forward_batch import ForwardBatch, ForwardMode
from radixmesh.services.worker.kv_pool import KVPool
from radixmesh.services.worker.loader import load_model
from radixmesh.services.worker.model_config import ModelConfig
from radixmesh.services.worker.parallel.tensor_parallel import (
    SINGLE,
    TensorParallel,
    init_group,
    leave_group,
)

# Tiny models: 4 query heads, 2 KV heads (TP=4 replicates each KV head on two ranks).
VARIANTS = {"llama": ("llama", {}), "qwen2-biases": ("qwen2", {}),
            "qwen3-tied": ("qwen3", {"tie_word_embeddings": True})}
PROMPT, SECOND_CHUNK = 11, 5
RTOL = 1e-4


@torch.no_grad()
def two_chunks(model: torch.nn.Module, config: ModelConfig) -> torch.Tensor:
    """Next-token logits of a prompt run as two chunks over one KV pool (the second chunk
    attends to the first through the cache), [PROMPT + SECOND_CHUNK, vocab]."""
    total = PROMPT + SECOND_CHUNK
    kv_heads = model.model.layers[0].self_attn.num_kv_heads  # the rank's share
    pool = KVPool(total, 1, config.num_hidden_layers, kv_heads, config.head_dim,
                  torch.float32, "cpu")
    backend = TorchAttentionBackend(pool)
    pages = torch.arange(1, total + 1, dtype=torch.int32)
    tokens = torch.randint(0, config.vocab_size, (total,),
                           generator=torch.Generator().manual_seed(3))
    logits = []
    for start, stop in ((0, PROMPT), (PROMPT, total)):
        n = stop - start
        batch = ForwardBatch(
            mode=ForwardMode.EXTEND, input_ids=tokens[start:stop],
            positions=torch.arange(start, stop), out_cache_loc=pages[start:stop].long(),
            seq_lens=torch.tensor([stop], dtype=torch.int32),
            extend_lens=torch.tensor([n], dtype=torch.int32),
            extend_starts=torch.tensor([0], dtype=torch.int32), page_table=pages[None, :stop],
            logits_indices=torch.arange(n), seq_lens_cpu=[stop], extend_lens_cpu=[n],
            num_extends=1, attn_backend=backend, kv_pool=pool)
        backend.prepare(batch)
        logits.append(model.compute_logits(model(batch)[batch.logits_indices]))
    return torch.cat(logits)


def logits_of(paths: dict[str, Path], parallel: TensorParallel) -> dict[str, torch.Tensor]:
    """Every variant's logits, from its checkpoint and from dummy weights."""
    out = {}
    for name, path in paths.items():
        config = ModelConfig.from_pretrained(path)
        for load_format in ("auto", "dummy"):
            model = load_model(config, path, load_format, parallel=parallel)
            out[f"{name}/{load_format}"] = two_chunks(model, config)
    return out


def run_rank(rank: int, size: int, init_file: str, paths: dict[str, Path],
             results: str) -> None:
    parallel = TensorParallel(rank, size)
    init_group(parallel, f"file://{init_file}", torch.device("cpu"), timeout_s=60)
    try:
        logits = logits_of(paths, parallel)
        torch.save(logits, f"{results}.{rank}")
    finally:
        leave_group()


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tp-models")
    return {name: make_model(root / name, arch, **options)
            for name, (arch, options) in VARIANTS.items()}


@pytest.fixture(scope="module")
def one_device(paths: dict[str, Path]) -> dict[str, torch.Tensor]:
    return logits_of(paths, SINGLE)


@pytest.mark.parametrize("size", [2, 4])
def test_split_model_computes_the_one_device_logits(
        size: int, paths: dict[str, Path], one_device: dict[str, torch.Tensor],
        tmp_path: Path) -> None:
    results = str(tmp_path / "logits")
    mp.start_processes(run_rank, args=(size, str(tmp_path / "init"), paths, results),
                       nprocs=size, start_method="spawn")
    for rank in range(size):  # every rank gathers the whole vocabulary's logits
        split = torch.load(f"{results}.{rank}")
        assert split.keys() == one_device.keys()
        for key, expected in one_device.items():
            assert split[key].shape == expected.shape, key
            torch.testing.assert_close(split[key], expected, rtol=RTOL, atol=RTOL * 10,
                                       msg=f"{key}, rank {rank} of {size}")


def test_dummy_weights_depend_on_the_seed_and_names_only(paths: dict[str, Path]) -> None:
    config = ModelConfig.from_pretrained(paths["llama"])
    first = load_model(config, paths["llama"], "dummy", seed=1)
    again = load_model(config, paths["llama"], "dummy", seed=1)
    other = load_model(config, paths["llama"], "dummy", seed=2)
    weight = "model.layers.1.mlp.down_proj.weight"
    assert torch.equal(first.state_dict()[weight], again.state_dict()[weight])
    assert not torch.equal(first.state_dict()[weight], other.state_dict()[weight])
