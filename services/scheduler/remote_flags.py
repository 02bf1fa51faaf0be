"""The scheduler's flags for pages another node holds (the cross-node page index, issue 20).

Named after `--hicache-storage-prefetch-policy` and its kin in SGLang: `--hicache-remote-policy`
says what happens to prompt pages the index finds on another node, `auto` deciding per request
which is faster (vLLM's KV-transfer and LMCache likewise fetch only what they are told to; a
cost model is ours). The two speeds seed that decision until the scheduler has measured them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from radixmesh.shared.sampling_params import REMOTE_POLICIES


@dataclass(frozen=True)
class RemoteFetchFlags:
    """Inherited by SchedulerConfig: every field is a flag of `radixmesh serve scheduler` and
    `radixmesh up`."""

    hicache_remote_policy: str = field(default="auto", metadata={
        "help": "prompt pages another node holds (in the --hicache-redis-url index): fetch "
                "them when that is estimated faster than recomputing them (auto), always, or "
                "never; a request's hicache_remote_policy overrides it",
        "choices": REMOTE_POLICIES})
    hicache_remote_bandwidth: float = field(default=2.0, metadata={
        "help": "GB/s a fetch from another node is assumed to reach until fetches are measured"})
    hicache_remote_prefill_speed: float = field(default=10000.0, metadata={
        "help": "prompt tokens per second a prefill is assumed to compute until prefills are "
                "measured"})
    hicache_remote_timeout: float = field(default=5.0, metadata={
        "help": "seconds a fetch from another node may take; pages not in by then are "
                "recomputed"})

    def check_remote_flags(self) -> None:
        if self.hicache_remote_policy not in REMOTE_POLICIES:
            raise ValueError(f"--hicache-remote-policy must be one of "
                             f"{', '.join(REMOTE_POLICIES)}, got {self.hicache_remote_policy!r}")
        for flag, value in (("--hicache-remote-bandwidth", self.hicache_remote_bandwidth),
                            ("--hicache-remote-prefill-speed", self.hicache_remote_prefill_speed),
                            ("--hicache-remote-timeout", self.hicache_remote_timeout)):
            if not value > 0:
                raise ValueError(f"{flag} must be > 0, got {value}")
