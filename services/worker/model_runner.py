"""Executes step plans: owns the weights, the KV pool, the attention backend and the sampler.

It decides nothing: every request, chunk and page comes from the plan. What it keeps between
steps is the per-request state the plan refers to (tokens, page-table mirror, KV length).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from radixmesh.services.worker.attention import make_attention_backend
from radixmesh.services.worker.batch_builder import BatchEntry, build_forward_batch
from radixmesh.services.worker.config import WorkerConfig
from radixmesh.services.worker.kv_pool import KVPool
from radixmesh.services.worker.loader import load_model, resolve_dtype
from radixmesh.services.worker.memory import kv_pool_tokens
from radixmesh.services.worker.model_config import ModelConfig
from radixmesh.services.worker.request_state import WorkerRequest
from radixmesh.services.worker.sampling import Sampler, SamplingBatch
from radixmesh.shared.step import NewRequest, StepPlan, StepResult, WorkerInfo

logger = logging.getLogger(__name__)

DEFAULT_MAX_RUNNING = 256


class PlanError(ValueError):
    """A plan contradicts the worker's state: scheduler and worker disagree, a bug."""


class ModelRunner:
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
        self.backend = make_attention_backend(pick_attention_backend(config.attention_backend),
                                              self.kv_pool)
        vocab_width = self.model_config.vocab_size
        self.sampler = Sampler(vocab_width, self.max_running, self.device)
        self.requests: dict[str, WorkerRequest] = {}
        self._free_slots = list(range(self.max_running - 1, -1, -1))
        self._seed_generator = torch.Generator().manual_seed(config.random_seed)
        self.model_id = str(model_path)

    def info(self) -> WorkerInfo:
        return WorkerInfo(
            model_id=self.model_id, num_pages=self.kv_pool.num_pages, page_size=self.page_size,
            context_len=self.context_len, vocab_size=self.model_config.vocab_size,
            eos_token_ids=self.model_config.eos_token_ids, kv_dtype=str(self.dtype).removeprefix("torch."),
            max_running_requests=self.max_running)

    @torch.inference_mode()
    def execute(self, plan: StepPlan) -> StepResult:
        for rid in plan.released:
            self._release(rid)
        for new in plan.new_requests:
            self._register(new)
        for write in plan.page_writes:
            table = self._request(write.rid).page_table
            end = write.start + len(write.page_ids)
            table.extend([0] * (end - len(table)))
            table[write.start:end] = write.page_ids
        if plan.is_empty:
            return StepResult(plan.step_id, [], [])
        entries = self._entries(plan)
        batch = build_forward_batch(entries, len(plan.extends), self.kv_pool, self.backend,
                                    self.device)
        self.backend.prepare(batch)
        hidden = self.model(batch)
        logits = self.model.compute_logits(hidden[batch.logits_indices])
        sampled = [entry.req for entry in entries if entry.sample]
        next_ids = self.sampler.sample(logits, self._sampling_batch(sampled)).tolist()
        for entry in entries:
            entry.req.kv_len += entry.length
        for req, token in zip(sampled, next_ids, strict=True):
            req.token_ids.append(token)
        return StepResult(plan.step_id, [req.rid for req in sampled], next_ids)

    def _entries(self, plan: StepPlan) -> list[BatchEntry]:
        entries = []
        for chunk in plan.extends:
            req = self._request(chunk.rid)
            if chunk.start != req.kv_len or chunk.start + chunk.length > len(req.token_ids):
                raise PlanError(f"{chunk} does not follow {req.rid}'s state: kv_len "
                                f"{req.kv_len}, {len(req.token_ids)} tokens")
            entries.append(BatchEntry(req, chunk.start, chunk.length, chunk.sample))
        for rid in plan.decodes:
            req = self._request(rid)
            if req.kv_len != len(req.token_ids) - 1:
                raise PlanError(f"decode of {rid} with kv_len {req.kv_len} and "
                                f"{len(req.token_ids)} tokens")
            entries.append(BatchEntry(req, req.kv_len, 1, True))
        return entries

    def _sampling_batch(self, reqs: list[WorkerRequest]) -> SamplingBatch:
        return SamplingBatch.build([req.sampling for req in reqs], [req.seed for req in reqs],
                                   [req.num_output_tokens for req in reqs],
                                   [req.slot for req in reqs], self.device)

    def _register(self, new: NewRequest) -> None:
        if new.rid in self.requests:
            raise PlanError(f"request {new.rid} registered twice")
        if not self._free_slots:
            raise PlanError(f"more than {self.max_running} running requests")
        seed = new.sampling.seed
        if seed is None:
            seed = int(torch.randint(0, 2**62, (), generator=self._seed_generator))
        req = WorkerRequest(new.rid, list(new.token_ids), new.num_prompt_tokens,
                            new.num_cached_tokens, new.sampling, seed, self._free_slots.pop(),
                            page_table=list(new.cached_page_ids))
        self.requests[new.rid] = req
        self.sampler.add_request(req.slot, new.sampling, new.token_ids[:new.num_prompt_tokens],
                                 new.token_ids[new.num_prompt_tokens:])

    def _release(self, rid: str) -> None:
        req = self.requests.pop(rid, None)
        if req is not None:
            self.sampler.release_request(req.slot)
            self._free_slots.append(req.slot)

    def _request(self, rid: str) -> WorkerRequest:
        try:
            return self.requests[rid]
        except KeyError:
            raise PlanError(f"unknown request {rid}") from None

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


def pick_attention_backend(name: str) -> str:
    """`auto` takes the fastest backend this machine runs; only `torch` exists so far."""
    return "torch" if name == "auto" else name
