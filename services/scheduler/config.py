"""The scheduler service's configuration: every field is a CLI flag of the same name."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SchedulerConfig:
    max_running_requests: int | None = field(default=None, metadata={
        "help": "most requests decoding at once (default: what the worker's slots allow)"})
    chunked_prefill_size: int = field(default=8192, metadata={
        "help": "most prompt tokens computed in one step; longer prompts are split. -1: no limit"})
    schedule_policy: str = field(default="fcfs", metadata={
        "help": "order of the waiting queue", "choices": ("fcfs", "lpm")})
    schedule_conservativeness: float = field(default=1.0, metadata={
        "help": "higher reserves more KV for running requests' future tokens before admitting"})
    enable_mixed_chunk: bool = field(default=False, metadata={
        "help": "run the decodes of running requests in the same step as a prefill chunk "
                "(when their pages fit), so admissions do not stall decoding"})
    disable_radix_cache: bool = field(default=False, metadata={
        "help": "do not reuse KV across requests with a shared prefix"})
    random_seed: int = field(default=0, metadata={
        "help": "seeds the sampling seeds of requests that bring none"})
    decode_log_interval: int = field(default=40, metadata={
        "help": "log a decode batch line every this many decode steps"})

    def __post_init__(self) -> None:
        if self.max_running_requests is not None and self.max_running_requests < 1:
            raise ValueError("--max-running-requests must be >= 1")
        if self.chunked_prefill_size == 0 or self.chunked_prefill_size < -1:
            raise ValueError("--chunked-prefill-size must be -1 or >= 1")
        if self.schedule_policy not in ("fcfs", "lpm"):
            raise ValueError(f"unknown --schedule-policy {self.schedule_policy!r}")
        if self.schedule_conservativeness <= 0:
            raise ValueError("--schedule-conservativeness must be > 0")
