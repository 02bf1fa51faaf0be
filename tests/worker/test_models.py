"""Our Llama/Mistral/Qwen2/Qwen3 reproduce HF transformers' logits on the same random weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRMSNorm, LlamaRotaryEmbedding

from radixmesh.make_model import make_model
from radixmesh.services.worker.attention.torch_backend import TorchAttentionBackend
from radixmesh.services.worker.checkpoint_sinks import checkpoint_targets
from radixmesh.services.worker.forward_batch import ForwardBatch, ForwardMode
from radixmesh.services.worker.kv_pool import KVPool
from radixmesh.services.worker.loader import load_model
from radixmesh.services.worker.model_config import ModelConfig
from radixmesh.services.worker.models.layers import RMSNorm, RotaryEmbedding

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("llama", {}),
    "llama-llama3-rope": ("llama", {"rope_scaling": LLAMA3_ROPE}),
    "llama-linear-rope": ("llama", {"rope_scaling": {"rope_type": "linear", "factor": 4.0}}),
    "llama-tied": ("llama", {"tie_word_embeddings": True}),
    "qwen2": ("qwen2", {}),
    "qwen3": ("qwen3", {}),
    "qwen3-tied-mha": ("qwen3", {"tie_word_embeddings": True, "num_kv_heads": 4}),
    "mistral": ("mistral", {}),
    "mistral-sliding": ("mistral", {"sliding_window": 6}),
    "qwen2-sliding-upper-layers": ("qwen2", {"sliding_window": 5, "num_layers": 4}),
}


class PagedSequence:
    """One sequence run through our model step by step over a real KV pool (page size 1)."""

    def __init__(self, model: torch.nn.Module, config: ModelConfig, max_len: int) -> None:
        self.model = model
        self.kv_pool = KVPool(max_len, 1, config.num_hidden_layers, config.num_key_value_heads,
                              config.head_dim, torch.float32, "cpu")
        self.backend = TorchAttentionBackend(self.kv_pool)
        self.pages = torch.arange(1, max_len + 1, dtype=torch.int32)  # page 0 is padding
        self.length = 0

    def extend(self, token_ids: list[int], mode: ForwardMode = ForwardMode.EXTEND) -> torch.Tensor:
        """Runs the new tokens; returns their next-token logits [n, vocab]."""
        n, start = len(token_ids), self.length
        self.length += n
        positions = torch.arange(start, self.length)
        batch = ForwardBatch(
            mode=mode, input_ids=torch.tensor(token_ids), positions=positions,
            out_cache_loc=self.pages[start:self.length].long(),
            seq_lens=torch.tensor([self.length], dtype=torch.int32),
            extend_lens=torch.tensor([n], dtype=torch.int32),
            extend_starts=torch.tensor([0], dtype=torch.int32),
            page_table=self.pages[None, :self.length], logits_indices=torch.arange(n),
            seq_lens_cpu=[self.length], extend_lens_cpu=[n],
            num_extends=0 if mode == ForwardMode.DECODE else 1,
            attn_backend=self.backend, kv_pool=self.kv_pool)
        self.backend.prepare(batch)
        hidden = self.model(batch)
        return self.model.compute_logits(hidden[batch.logits_indices])


def make_pair(path: Path, arch: str, options: dict[str, Any]) -> tuple[ModelConfig, Any, Any]:
    make_model(path, arch, **options)
    config = ModelConfig.from_pretrained(path)
    ours = load_model(config, path)
    theirs = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return config, ours, theirs


def random_prompt(vocab_size: int, length: int, seed: int = 1) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (length,), generator=generator).tolist()


@pytest.mark.parametrize("variant", list(VARIANTS))
@torch.no_grad()
def test_prefill_logits_match_hf(tmp_path: Path, variant: str) -> None:
    arch, options = VARIANTS[variant]
    config, ours, theirs = make_pair(tmp_path, arch, options)
    prompt = random_prompt(config.vocab_size, 20)

    logits = PagedSequence(ours, config, 20).extend(prompt)

    expected = theirs(torch.tensor([prompt])).logits[0]
    assert logits.dtype == torch.float32 and logits.shape == (20, config.vocab_size)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("variant", ["llama", "llama-tied"])
@torch.no_grad()
def test_logits_written_into_a_given_buffer_equal_the_returned_ones(tmp_path: Path,
                                                                     variant: str) -> None:
    """The CUDA-graph runner's path: bf16 logits converted straight into its float32 buffer."""
    arch, options = VARIANTS[variant]
    config, ours, _ = make_pair(tmp_path, arch, options)
    ours = ours.to(torch.bfloat16)
    hidden = torch.randn(3, config.hidden_size, generator=torch.Generator().manual_seed(0))
    hidden = hidden.to(torch.bfloat16)
    buffer = torch.full((5, config.vocab_size), float("nan"))

    written = ours.compute_logits(hidden, out=buffer[:3])

    assert written.data_ptr() == buffer.data_ptr()
    torch.testing.assert_close(buffer[:3], ours.compute_logits(hidden), atol=0, rtol=0)
    assert buffer[3:].isnan().all()


@pytest.mark.parametrize("variant", ["llama", "qwen3", "mistral-sliding"])
@torch.no_grad()
def test_chunked_prefill_then_decode_match_hf(tmp_path: Path, variant: str) -> None:
    """KV written by earlier passes is read back correctly by later ones."""
    arch, options = VARIANTS[variant]
    config, ours, theirs = make_pair(tmp_path, arch, options)
    tokens = random_prompt(config.vocab_size, 16, seed=2)
    sequence = PagedSequence(ours, config, len(tokens))

    chunks = [sequence.extend(tokens[:7]), sequence.extend(tokens[7:12])]
    chunks += [sequence.extend([token], ForwardMode.DECODE) for token in tokens[12:]]

    expected = theirs(torch.tensor([tokens])).logits[0]
    torch.testing.assert_close(torch.cat(chunks), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_is_bitwise_hf(dtype: torch.dtype) -> None:
    ours, theirs = RMSNorm(32, eps=1e-5).to(dtype), LlamaRMSNorm(32, eps=1e-5).to(dtype)
    weight = torch.randn(32, generator=torch.Generator().manual_seed(0)).to(dtype)
    ours.weight.data.copy_(weight)
    theirs.weight.data.copy_(weight)
    x = torch.randn(5, 32, generator=torch.Generator().manual_seed(1)).to(dtype) * 3

    assert torch.equal(ours(x), theirs(x))


@pytest.mark.parametrize("rope_scaling", [
    None, {"rope_type": "linear", "factor": 2.0},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 512}])
def test_rope_tables_equal_hf_at_long_positions(rope_scaling: dict[str, Any] | None) -> None:
    head_dim, max_position, theta = 64, 4096, 500000.0
    hf_config = LlamaConfig(hidden_size=4 * head_dim, num_attention_heads=4,
                            max_position_embeddings=max_position, rope_theta=theta,
                            rope_scaling=dict(rope_scaling) if rope_scaling else None)
    positions = torch.tensor([0, 1, 17, 511, 512, 2000, max_position - 1])

    ours = RotaryEmbedding(head_dim, max_position, theta, rope_scaling)
    cos, sin = ours(positions)
    hf_cos, hf_sin = LlamaRotaryEmbedding(hf_config)(torch.zeros(1), positions[None])

    # HF repeats each half; ours stores it once.
    torch.testing.assert_close(torch.cat((cos, cos), -1), hf_cos[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.cat((sin, sin), -1), hf_sin[0], atol=1e-6, rtol=0)


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_checkpoint_names_are_hf_names(tmp_path: Path, arch: str) -> None:
    config, ours, theirs = make_pair(tmp_path, arch, {"tie_word_embeddings": True})

    hf_shapes = {name: tensor.shape for name, tensor in theirs.state_dict().items()
                 if name != "lm_head.weight"}
    targets = checkpoint_targets(ours)
    assert {name: tensor.shape for name, tensor in targets.items()} == hf_shapes
    assert not hasattr(ours, "lm_head")  # tied: the logits reuse the embedding
    # Every parameter element is filled from exactly one checkpoint tensor.
    assert sum(t.numel() for t in targets.values()) == sum(p.numel() for p in ours.parameters())
    assert "model.layers.0.self_attn.qkv_proj.weight" in dict(ours.named_parameters())
    assert config.qk_norm == (arch == "qwen3")
