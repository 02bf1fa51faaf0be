"""Qwen2: Llama with a bias on q/k/v (always) and none on o."""

from __future__ import annotations

from radixmesh.services.worker.model_config import ModelConfig
from radixmesh.services.worker.models.llama import LlamaAttention, LlamaForCausalLM


class Qwen2Attention(LlamaAttention):
    @staticmethod
    def projection_biases(config: ModelConfig) -> tuple[bool, bool]:
        return True, False


class Qwen2ForCausalLM(LlamaForCausalLM):
    attention_class = Qwen2Attention
