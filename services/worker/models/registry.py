"""Architecture name (HF `architectures[0]`) -> model class."""

from __future__ import annotations

from torch import nn

from radixmesh.services.worker.model_config import ModelConfig, UnsupportedModelError
from radixmesh.services.worker.models.llama import LlamaForCausalLM
from radixmesh.services.worker.models.qwen2 import Qwen2ForCausalLM
from radixmesh.services.worker.models.qwen3 import Qwen3ForCausalLM
from radixmesh.shared.registry import Registry

MODEL_CLASSES: Registry[type[nn.Module]] = Registry("model architecture", UnsupportedModelError)
MODEL_CLASSES.add("LlamaForCausalLM", LlamaForCausalLM)
# Same weights and math as Llama; the sliding window is in the config.
MODEL_CLASSES.add("MistralForCausalLM", LlamaForCausalLM)
MODEL_CLASSES.add("Qwen2ForCausalLM", Qwen2ForCausalLM)
MODEL_CLASSES.add("Qwen3ForCausalLM", Qwen3ForCausalLM)


def model_class(config: ModelConfig) -> type[nn.Module]:
    return MODEL_CLASSES.get(config.architecture)
