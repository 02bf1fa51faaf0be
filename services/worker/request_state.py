"""The worker's per-request state between steps."""

from __future__ import annotations

from dataclasses import dataclass, field

from radixmesh.shared.sampling_params import SamplingParams
from radixmesh.shared.trace_context import NO_TRACE, TraceContext


@dataclass(eq=False)
class WorkerRequest:
    """`token_ids` holds every token whose value the host knows; `num_pending` more have been
    sampled by launched steps whose results are still on the device (an overlapped worker
    launches step N+1 before it reads step N's tokens). `kv_len` counts the tokens whose KV
    the launched steps write, in the pages of `page_table` (a mirror of the scheduler's)."""

    rid: str
    token_ids: list[int]
    num_prompt_tokens: int
    kv_len: int
    sampling: SamplingParams
    seed: int
    slot: int
    page_table: list[int] = field(default_factory=list)
    num_pending: int = 0
    trace: TraceContext = NO_TRACE  # links the worker's step spans to the request's trace

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids) + self.num_pending

    @property
    def num_output_tokens(self) -> int:
        return self.num_tokens - self.num_prompt_tokens

    @property
    def drawing_output_index(self) -> int:
        """Which output the token a step is drawing is: `apply` has already counted it."""
        return self.num_output_tokens - 1
