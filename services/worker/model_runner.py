"""Executes step plans: owns the weights, the KV pool, the attention backend and the sampler.

It decides nothing: every request, chunk and page comes from the plan. What it keeps between
steps is the per-request state the plan refers to (tokens, page-table mirror, KV length).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from radixmesh.services.worker.attention import make_attention_backend, pick_attention_backend
from radixmesh.services.worker.base import ModelWorker
from radixmesh.services.worker.batch_builder import build_forward_batch
from radixmesh.services.worker.config import WorkerConfig
from radixmesh.services.worker.kv_pool import KVPool
from radixmesh.services.worker.loader import load_model, resolve_dtype
from radixmesh.services.worker.memory import kv_pool_tokens
from radixmesh.services.worker.model_config import ModelConfig
from radixmesh.services.worker.request_state import WorkerRequest
from radixmesh.services.worker.request_table import RequestTable
from radixmesh.services.worker.sampling import Sampler, SamplingBatch
from radixmesh.shared.step import StepPlan, StepResult, WorkerInfo

logger = logging.getLogger(__name__)

DEFAULT_MAX_RUNNING = 256


class ModelRunner(ModelWorker):
    name = "model"

    def __init__(self, config: WorkerConfig, model_path: Path) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        self.model_config = ModelConfig.from_pretrained(model_path)
        self.context_len = config.context_length or self.model_config.context_len
        self.dtype = resolve_dtype(config.dtype, self.model_config)
        self.model = load_model(self.model_config, model_path, config.load_format,
                                config.dtype, self.device)
        self.page_size = config.page_size or (16 if self.device.type == "cuda" else 1)
        self.kv_pool = self._make_kv_pool()
        self.max_running = min(config.max_running_requests or DEFAULT_MAX_RUNNING,
                               self.kv_pool.num_pages)
        self.backend = make_attention_backend(
            pick_attention_backend(config.attention_backend, self.device), self.kv_pool)
        vocab_width = self.model_config.vocab_size
        self.sampler = Sampler(vocab_width, self.max_running, self.device)
        seeds = torch.Generator().manual_seed(config.random_seed)
        self.table = RequestTable(
            self.max_running, lambda: int(torch.randint(0, 2**62, (), generator=seeds)),
            on_register=self._register_sampling,
            on_release=lambda req: self.sampler.release_request(req.slot))
        self.model_id = str(model_path)

    def info(self) -> WorkerInfo:
        return WorkerInfo(
            model_id=self.model_id, num_pages=self.kv_pool.num_pages, page_size=self.page_size,
            context_len=self.context_len, vocab_size=self.model_config.vocab_size,
            eos_token_ids=self.model_config.eos_token_ids, kv_dtype=str(self.dtype).removeprefix("torch."),
            max_running_requests=self.max_running)

    @property
    def num_requests(self) -> int:
        return len(self.table)

    @torch.inference_mode()
    def execute(self, plan: StepPlan) -> StepResult:
        entries = self.table.apply(plan)
        if not entries:
            return StepResult(plan.step_id, [], [])
        batch = build_forward_batch(entries, len(plan.extends), self.kv_pool, self.backend,
                                    self.device)
        self.backend.prepare(batch)
        hidden = self.model(batch)
        logits = self.model.compute_logits(hidden[batch.logits_indices])
        sampled = [entry.req for entry in entries if entry.sample]
        next_ids = self.sampler.sample(logits, self._sampling_batch(sampled)).tolist()
        return self.table.commit(plan, entries, next_ids)

    def _sampling_batch(self, reqs: list[WorkerRequest]) -> SamplingBatch:
        return SamplingBatch.build([req.sampling for req in reqs], [req.seed for req in reqs],
                                   [req.num_output_tokens for req in reqs],
                                   [req.slot for req in reqs], self.device)

    def _register_sampling(self, req: WorkerRequest) -> None:
        prompt, output = req.token_ids[:req.num_prompt_tokens], req.token_ids[req.num_prompt_tokens:]
        self.sampler.add_request(req.slot, req.sampling, prompt, output)

    def _make_kv_pool(self) -> KVPool:
        mc = self.model_config
        per_token = KVPool.bytes_per_token(mc.num_hidden_layers, mc.num_key_value_heads,
                                           mc.head_dim, self.dtype)
        tokens = kv_pool_tokens(self.config.max_total_tokens, per_token, self.device,
                                self.config.mem_fraction_static)
        num_pages = tokens // self.page_size
        if num_pages < 1:
            raise ValueError(f"a KV pool of {tokens} tokens holds no page of {self.page_size}")
        logger.info("KV pool: %d pages of %d tokens (%.1f MiB)", num_pages, self.page_size,
                    num_pages * self.page_size * per_token / 2**20)
        return KVPool(num_pages, self.page_size, mc.num_hidden_layers, mc.num_key_value_heads,
                      mc.head_dim, self.dtype, self.device)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)

