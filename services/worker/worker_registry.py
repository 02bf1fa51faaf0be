"""Model workers by name: what `--worker` chooses. Each factory builds a ready ModelWorker.

Both workers read the model directory (the real one for its weights; the null one only for
the shape the rest of the mesh must agree on: vocabulary, EOS ids, context length), so a
null-worker mesh tokenizes and detokenizes exactly like a real one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from radixmesh.services.worker.base import ModelWorker
from radixmesh.services.worker.config import (
    NULL_DEFAULT_MAX_RUNNING,
    NULL_DEFAULT_TOTAL_TOKENS,
    WorkerConfig,
)
from radixmesh.services.worker.model_config import ModelConfig
from radixmesh.services.worker.model_runner import ModelRunner
from radixmesh.services.worker.null_worker import NullWorker
from radixmesh.services.worker.parallel.worker_group import TensorParallelWorker
from radixmesh.shared.model_location import resolve_model_path
from radixmesh.shared.registry import Registry
from radixmesh.shared.step import WorkerInfo

WorkerFactory = Callable[[WorkerConfig], ModelWorker]


def model_path_of(config: WorkerConfig) -> Path:
    """`--model-path`, or the default model."""
    return resolve_model_path(config.model_path or None, config.revision, config.hf_token)


def build_model_worker(config: WorkerConfig) -> ModelWorker:
    """The model on one device, or a tensor-parallel group of `--tp-size` ranks."""
    if config.tp_size > 1:
        return TensorParallelWorker(config, model_path_of(config))
    return ModelRunner(config, model_path_of(config))


def null_worker_info(config: WorkerConfig) -> WorkerInfo:
    """The null worker's pool and model shape, from the same flags the model worker takes."""
    model_path = model_path_of(config)
    model = ModelConfig.from_pretrained(model_path)
    page_size = config.page_size or 1
    total_tokens = config.max_total_tokens or NULL_DEFAULT_TOTAL_TOKENS
    return WorkerInfo(
        model_id=str(model_path), num_pages=max(1, total_tokens // page_size),
        page_size=page_size, context_len=config.context_length or model.context_len,
        vocab_size=model.vocab_size, eos_token_ids=model.eos_token_ids, kv_dtype="none",
        max_running_requests=config.max_running_requests or NULL_DEFAULT_MAX_RUNNING)


def build_null_worker(config: WorkerConfig) -> ModelWorker:
    return NullWorker(null_worker_info(config))


WORKERS: Registry[WorkerFactory] = Registry("worker")
WORKERS.add("model", build_model_worker)
WORKERS.add("null", build_null_worker)


def build_worker(config: WorkerConfig) -> ModelWorker:
    """The worker `--worker` names."""
    return WORKERS.get(config.worker)(config)
