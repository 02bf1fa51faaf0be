"""Llama (and Mistral, which has the same structure): the decoder the other models extend.

Module names are HF's (`model.layers.{i}.self_attn.o_proj`, ...) except for two fused
projections, each one GEMM: `self_attn.qkv_proj` stacks HF's `q_proj`, `k_proj` and `v_proj`
(rows in that order, biases likewise) and `mlp.gate_up_proj` stacks `gate_proj` and `up_proj`.
Each `FusedLinear` names its row blocks by those HF modules, and the loader copies a HF
checkpoint's tensors into them by that name. With quantization (`config.quantization`) the
decoder's projections are quantized layers under the same names; the embeddings and `lm_head`
stay in the activation dtype (as in vLLM's and SGLang's FP8 checkpoints).

Qwen2 and Qwen3 subclass `LlamaAttention` through two hooks (`projection_biases`,
`normalize_qk`) and swap it in with the `attention_class` attribute of `LlamaForCausalLM`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from radixmesh.services.worker.attention.base import AttentionSpec, PagedAttention
from radixmesh.services.worker.forward_batch import ForwardBatch
from radixmesh.services.worker.model_config import ModelConfig
from radixmesh.services.worker.models.layers import (
    GatedMLP,
    RMSNorm,
    RopeTables,
    RotaryEmbedding,
    apply_rotary,
)
from radixmesh.services.worker.models.sinks import Cut
from radixmesh.services.worker.parallel.layers import (
    gather_logits,
    make_embedding,
    make_lm_head,
    make_row_parallel,
)
from radixmesh.services.worker.parallel.sharding import even_range, kv_head_range
from radixmesh.services.worker.parallel.tensor_parallel import SINGLE, TensorParallel
from radixmesh.services.worker.quantization.linear import make_fused_linear


class LlamaAttention(nn.Module):
    """Under tensor parallelism a rank holds a share of the query heads and the KV heads they
    read (parallel/sharding.py): rows of q/k/v, columns of o, whose sums the ranks add up."""

    def __init__(self, config: ModelConfig, layer_id: int,
                 parallel: TensorParallel = SINGLE) -> None:
        super().__init__()
        self.head_dim = head_dim = config.head_dim
        heads = even_range(config.num_attention_heads, parallel, "attention heads")
        kv_heads = kv_head_range(config.num_key_value_heads, parallel)
        self.num_heads, self.num_kv_heads = len(heads), len(kv_heads)
        q_cut = Cut(0, heads.start * head_dim, heads.stop * head_dim,
                    config.num_attention_heads * head_dim)
        kv_cut = Cut(0, kv_heads.start * head_dim, kv_heads.stop * head_dim,
                     config.num_key_value_heads * head_dim)
        qkv_bias, o_bias = self.projection_biases(config)
        prefix = f"model.layers.{layer_id}.self_attn"  # the HF name, for quantization's skips
        self.qkv_proj = make_fused_linear(
            config.hidden_size,
            {"q_proj": q_cut.length, "k_proj": kv_cut.length, "v_proj": kv_cut.length},
            qkv_bias, config.quantization, prefix,
            {"q_proj": q_cut, "k_proj": kv_cut, "v_proj": kv_cut} if parallel.is_split else None)
        self.o_proj = make_row_parallel(Cut(1, q_cut.start, q_cut.stop, q_cut.full),
                                        config.hidden_size, o_bias, config.quantization,
                                        f"{prefix}.o_proj", parallel)
        self.attn = PagedAttention(AttentionSpec(
            layer_id=layer_id, num_heads=self.num_heads, num_kv_heads=self.num_kv_heads,
            head_dim=self.head_dim, scaling=self.head_dim ** -0.5,
            sliding_window=config.layer_sliding_window(layer_id)))

    @staticmethod
    def projection_biases(config: ModelConfig) -> tuple[bool, bool]:
        """(bias on q/k/v, bias on o). Llama's `attention_bias` covers all four."""
        return config.attention_bias, config.attention_bias

    def normalize_qk(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hook before RoPE on q [T, heads, D] and k [T, kv_heads, D]; Llama has none."""
        return q, k

    def forward(self, hidden: torch.Tensor, rope: RopeTables, batch: ForwardBatch) -> torch.Tensor:
        num_tokens = hidden.shape[0]
        # Column views of one [T, q + 2 kv] output: RoPE and the KV store take strided rows.
        q, k, v = self.qkv_proj.forward_shards(hidden)
        q = q.view(num_tokens, self.num_heads, self.head_dim)
        k = k.view(num_tokens, self.num_kv_heads, self.head_dim)
        q, k = apply_rotary(*self.normalize_qk(q, k), rope)
        return self.o_proj(self.attn(q, k, v, batch))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int,
                 attention_class: type[LlamaAttention], parallel: TensorParallel) -> None:
        super().__init__()
        self.self_attn = attention_class(config, layer_id, parallel)
        self.mlp = GatedMLP(config.hidden_size, config.intermediate_size, config.mlp_bias,
                            config.quantization, f"model.layers.{layer_id}.mlp", parallel)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor | None, rope: RopeTables,
                batch: ForwardBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(mlp output, residual stream before it); their sum is HF's layer output.

        Each skip connection is added by the next norm (`norm(x, residual)`), so that on the
        GPU the add and the norm are one kernel; the sums are the same as HF's. `residual` is
        None for the first layer, whose input is the embeddings alone.
        """
        if residual is None:
            residual, hidden = hidden, self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(hidden, rope, batch)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class LlamaModel(nn.Module):
    def __init__(self, config: ModelConfig, attention_class: type[LlamaAttention],
                 parallel: TensorParallel) -> None:
        super().__init__()
        self.embed_tokens = make_embedding(config.vocab_size, config.hidden_size, parallel)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, layer_id, attention_class, parallel)
            for layer_id in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        # One table for all layers: looked up once per pass, not once per layer.
        self.rotary_emb = RotaryEmbedding(config.head_dim, config.max_position_embeddings,
                                          config.rope_theta, config.rope_scaling)

    def forward(self, batch: ForwardBatch) -> torch.Tensor:
        hidden = self.embed_tokens(batch.input_ids)
        rope = self.rotary_emb(batch.positions)
        residual = None
        for layer in self.layers:
            hidden, residual = layer(hidden, residual, rope, batch)
        normed, _ = self.norm(hidden, residual)
        return normed


class LlamaForCausalLM(nn.Module):
    """forward(batch) -> final hidden states [T, hidden]; compute_logits(hidden) -> [S, vocab].

    With tied embeddings there is no `lm_head` module: the logits reuse `embed_tokens.weight`.
    `parallel`: this rank's place in its tensor-parallel group (one device by default); every
    rank computes the whole vocabulary's logits.
    """

    attention_class: type[LlamaAttention] = LlamaAttention

    def __init__(self, config: ModelConfig, parallel: TensorParallel = SINGLE) -> None:
        super().__init__()
        self.config = config
        self.parallel = parallel
        self.model = LlamaModel(config, self.attention_class, parallel)
        if not config.tie_word_embeddings:
            self.lm_head = make_lm_head(config.hidden_size, config.vocab_size, parallel)

    @property
    def kv_heads(self) -> int:
        """KV heads per layer in this rank's KV cache (all of them on one device)."""
        return self.model.layers[0].self_attn.num_kv_heads

    @property
    def output_embedding(self) -> torch.Tensor:
        if self.config.tie_word_embeddings:
            return self.model.embed_tokens.weight
        return self.lm_head.weight

    def forward(self, batch: ForwardBatch) -> torch.Tensor:
        return self.model(batch)

    def compute_logits(self, hidden: torch.Tensor, out: torch.Tensor | None = None
                       ) -> torch.Tensor:
        """Next-token logits in float32 for the rows of `hidden` ([S, hidden]), written into
        `out` ([S, vocab] float32) when given: converting straight into it spares a float32
        temporary the size of the logits."""
        logits = gather_logits(F.linear(hidden, self.output_embedding), self.config.vocab_size,
                               self.parallel)
        if out is None:
            return logits.float()
        return out.copy_(logits)
