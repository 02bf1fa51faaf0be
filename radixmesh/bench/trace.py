"""`RequestTrace`: what one benchmark request did, timestamped on the client's clock.

Both paths fill traces the same way (times from `time.perf_counter()`, in seconds), so the
mesh and the in-process engine are measured by the same yardstick.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class RequestTrace:
    """Invariants: `chunk_times` and `chunk_tokens` have equal lengths, times never decrease,
    and only chunks that carried at least one token are recorded."""

    prompt_tokens: int              # the workload's prompt length; usage may say otherwise
    send_time: float | None = None  # None: never sent (the run was cut short)
    chunk_times: list[float] = field(default_factory=list)
    chunk_tokens: list[int] = field(default_factory=list)
    end_time: float | None = None
    usage: dict | None = None       # flat: prompt_tokens, completion_tokens, cached_tokens
    finish: dict | None = None
    error: str | None = None

    def on_chunk(self, now: float, num_tokens: int) -> None:
        if num_tokens > 0:
            self.chunk_times.append(now)
            self.chunk_tokens.append(num_tokens)

    def on_end(self, now: float, usage: dict | None, finish: dict | None) -> None:
        """The last message; an "abort" finish (the server gave up on it) makes it a failure."""
        self.end_time, self.finish = now, finish
        self.usage = flat_usage(usage) if usage is not None else None
        if finish is not None and finish.get("type") == "abort":
            self.error = finish.get("message") or "aborted by the server"

    def on_error(self, now: float, message: str) -> None:
        self.end_time, self.error = now, message

    @property
    def succeeded(self) -> bool:
        return self.error is None and self.end_time is not None and self.send_time is not None

    @property
    def output_tokens(self) -> int:
        return sum(self.chunk_tokens)

    @property
    def ttft(self) -> float | None:
        if self.send_time is None or not self.chunk_times:
            return None
        return self.chunk_times[0] - self.send_time

    @property
    def e2e(self) -> float | None:
        if self.send_time is None or self.end_time is None:
            return None
        return self.end_time - self.send_time


def flat_usage(usage: dict) -> dict:
    """Usage as {prompt_tokens, completion_tokens, cached_tokens}, from the flat form or the
    OpenAI form that clients hand back (cached tokens under `prompt_tokens_details`)."""
    details = usage.get("prompt_tokens_details") or {}
    return {"prompt_tokens": int(usage.get("prompt_tokens", 0)),
            "completion_tokens": int(usage.get("completion_tokens", 0)),
            "cached_tokens": int(usage.get("cached_tokens", details.get("cached_tokens", 0)))}
