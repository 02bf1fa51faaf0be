"""Architecture name (HF `architectures[0]`) -> model class."""

from __future__ import annotations

from torch import nn

from radixmesh.services.worker.model_config import ModelConfig, UnsupportedModelError
from radixmesh.services.worker.models.llama import LlamaForCausalLM
from radixmesh.services.worker.models.qwen2 import Qwen2ForCausalLM
from radixmesh.services.worker.models.qwen3 import Qwen3ForCausalLM

MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,  # same weights and math; the window is in the config
    "Qwen2ForCausalLM": Qwen2ForCausalLM,
    "Qwen3ForCausalLM": Qwen3ForCausalLM,
}


def model_class(config: ModelConfig) -> type[nn.Module]:
    try:
        return MODEL_CLASSES[config.architecture]
    except KeyError:
        known = ", ".join(sorted(MODEL_CLASSES))
        raise UnsupportedModelError(
            f"no model class for {config.architecture!r}; supported: {known}") from None
