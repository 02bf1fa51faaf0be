"""Whether fetching a request's prompt pages from another node beats recomputing them.

Fetch time is the pages' bytes over the link bandwidth fetches have reached; recompute time is
their tokens over the prefill speed steps have reached (design §4: break-even bandwidth = KV
bytes per token / prefill time per token). Both start from the flags' figures and follow
measurements as they come, so the choice adapts to the machine and the model it runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from radixmesh.shared.step import StepPlan

GB = 10**9
SMOOTHING = 0.3          # weight of a new measurement in the running estimate
MIN_PREFILL_TOKENS = 32  # a step computing fewer prompt tokens says little about prefill speed


def _blend(old: float, new: float) -> float:
    return (1 - SMOOTHING) * old + SMOOTHING * new


@dataclass(frozen=True, slots=True)
class Decision:
    fetch: bool
    fetch_s: float      # estimated
    recompute_s: float  # estimated
    why: str            # "auto", or the flag or request that forced it


class PrefillMeter:
    """Measures prompt tokens per second from the steps that carry prefill chunks.

    A step's time is from when its plan went out, or the previous result came back if later
    (plans are pipelined: the worker starts a step once the one before it is done), to its
    own result. Mixed steps count their decodes' time too: a slight underestimate of speed.
    """

    def __init__(self, initial_tokens_per_s: float) -> None:
        self.tokens_per_s = initial_tokens_per_s
        self.measured = 0
        self._sent: dict[int, float] = {}
        self._last_result = 0.0

    def planned(self, step_id: int) -> None:
        self._sent[step_id] = time.monotonic()

    def completed(self, plan: StepPlan) -> None:
        now = time.monotonic()
        sent = self._sent.pop(plan.step_id, now)
        for stale in [step for step in self._sent if step < plan.step_id]:
            del self._sent[stale]  # plans made but never sent (empty ones)
        started, self._last_result = max(sent, self._last_result), now
        tokens = sum(chunk.length for chunk in plan.extends)
        if tokens >= MIN_PREFILL_TOKENS and now > started:
            self.tokens_per_s = _blend(self.tokens_per_s, tokens / (now - started))
            self.measured += 1


class RemoteDecider:
    """Invariant: `bandwidth` (bytes/s) and `prefill.tokens_per_s` stay > 0."""

    def __init__(self, policy: str, bandwidth_gbps: float, prefill_tokens_per_s: float,
                 page_bytes: int, page_size: int) -> None:
        self.policy = policy
        self.bandwidth = bandwidth_gbps * GB
        self.prefill = PrefillMeter(prefill_tokens_per_s)
        self.page_bytes = page_bytes
        self.page_size = page_size

    def decide(self, num_pages: int, override: str | None = None) -> Decision:
        fetch_s = num_pages * self.page_bytes / self.bandwidth
        recompute_s = num_pages * self.page_size / self.prefill.tokens_per_s
        policy = override or self.policy
        if policy == "auto":
            return Decision(fetch_s < recompute_s, fetch_s, recompute_s, "auto")
        why = "request" if override else "--hicache-remote-policy"
        return Decision(policy == "fetch", fetch_s, recompute_s, why)

    def fetched(self, num_pages: int, seconds: float) -> None:
        """A fetch brought `num_pages` in `seconds` (the whole call, as a request waits it)."""
        if num_pages and seconds > 0:
            self.bandwidth = _blend(self.bandwidth, num_pages * self.page_bytes / seconds)

    @property
    def break_even_bandwidth(self) -> float:
        """Bytes/s above which fetching beats recomputing, at the measured prefill speed."""
        return self.page_bytes / self.page_size * self.prefill.tokens_per_s
