"""The worker's per-request state between steps."""

from __future__ import annotations

from dataclasses import dataclass, field

from radixmesh.shared.sampling_params import SamplingParams


@dataclass(eq=False)
class WorkerRequest:
    """`token_ids` holds every known token, outputs appended as the worker samples them;
    `kv_len` tokens have KV in the pages of `page_table` (a mirror of the scheduler's)."""

    rid: str
    token_ids: list[int]
    num_prompt_tokens: int
    kv_len: int
    sampling: SamplingParams
    seed: int
    slot: int
    page_table: list[int] = field(default_factory=list)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens
