"""Qwen3: Llama plus an RMSNorm over each head of q and of k, applied before RoPE."""

from __future__ import annotations

import torch

from radixmesh.services.worker.model_config import ModelConfig
from radixmesh.services.worker.models.layers import RMSNorm
from radixmesh.services.worker.models.llama import LlamaAttention, LlamaForCausalLM
from radixmesh.services.worker.parallel.tensor_parallel import SINGLE, TensorParallel


class Qwen3Attention(LlamaAttention):
    def __init__(self, config: ModelConfig, layer_id: int,
                 parallel: TensorParallel = SINGLE) -> None:
        super().__init__(config, layer_id, parallel)
        # Over head_dim only: one weight vector shared by all heads.
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)

    def normalize_qk(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.q_norm(q), self.k_norm(k)


class Qwen3ForCausalLM(LlamaForCausalLM):
    attention_class = Qwen3Attention
