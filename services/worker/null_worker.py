"""A worker that does no model math: it keeps the same per-request state as the real one and
answers every sampling slot with a fixed token sequence. It measures the mesh by itself, and
in tests it drives the scheduler while checking that no step writes a page another live
request reads."""

from __future__ import annotations

import dataclasses
import itertools

from radixmesh.services.worker.base import ModelWorker
from radixmesh.services.worker.batch_builder import BatchEntry, StepRows
from radixmesh.services.worker.host_kv import check_copies
from radixmesh.services.worker.request_table import PlanError, RequestTable
from radixmesh.shared.step import StepPlan, StepResult, WorkerInfo

# Token n of an output is FIRST_TOKEN + n modulo the vocabulary, skipping EOS ids, so a null
# run always lasts max_new_tokens and its output is easy to predict in tests.
FIRST_TOKEN = 7


class NullWorker(ModelWorker):
    name = "null"

    def __init__(self, info: WorkerInfo, check_pages: bool = False) -> None:
        self._info = dataclasses.replace(info, worker=self.name)
        self.check_pages = check_pages
        seeds = itertools.count()
        self.table = RequestTable(info.max_running_requests, lambda: next(seeds))
        self._tokens = self._token_table(info.vocab_size, frozenset(info.eos_token_ids))
        self._host_slots = 0  # slots of the host pool the scheduler names; 0: none

    def info(self) -> WorkerInfo:
        return self._info

    @property
    def num_requests(self) -> int:
        return len(self.table)

    def execute(self, plan: StepPlan) -> StepResult:
        # No KV, so nothing to map or copy; the copies are still checked like the real
        # worker checks them, and count as landed at once.
        if plan.host_pool is not None:
            self._host_slots = plan.host_pool.num_slots if plan.host_pool.name else 0
        check_copies(plan, self._info.num_pages, self._host_slots)
        rows = self.table.apply(plan)
        if self.check_pages:
            self._check_pages(rows)
        tokens = self._tokens
        # The output index each sampled row draws (WorkerRequest.drawing_output_index, inline:
        # this runs for every row of every step).
        drawn = [tokens[(FIRST_TOKEN + len(req.token_ids) + req.num_pending
                         - req.num_prompt_tokens - 1) % len(tokens)] for req in rows.sampled]
        result = self.table.commit(plan, rows, drawn)
        result.backed_up_through = plan.step_id
        return result

    def token_at(self, output_position: int) -> int:
        return self._tokens[(FIRST_TOKEN + output_position) % len(self._tokens)]

    @staticmethod
    def _token_table(vocab: int, eos: frozenset[int]) -> list[int]:
        """Entry t: the first id from t on (wrapping) that is no EOS id."""
        table = []
        for token in range(vocab):
            while token in eos:
                token = (token + 1) % vocab
            table.append(token)
        return table

    def _check_pages(self, rows: StepRows) -> None:
        """Every page this step writes must be in range and read by no other live request."""
        page_size, num_pages = self._info.page_size, self._info.num_pages
        writers: dict[int, str] = {}
        decodes = [BatchEntry(req, start, 1, True)
                   for req, start in zip(rows.decodes, rows.decode_starts, strict=True)]
        for entry in rows.extends + decodes:
            table = entry.req.page_table
            for position in range(entry.start, entry.start + entry.length):
                index = position // page_size
                if index >= len(table) or not 1 <= table[index] <= num_pages:
                    raise PlanError(f"{entry.req.rid} writes position {position} without a page")
                writers[table[index]] = entry.req.rid
        for req in self.table.requests.values():
            for page in req.page_table[:-(-req.kv_len // page_size)]:
                writer = writers.get(page)
                if writer is not None and writer != req.rid:
                    raise PlanError(f"{writer} writes page {page}, which {req.rid} reads")
