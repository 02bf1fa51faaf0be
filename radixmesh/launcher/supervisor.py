"""When `radixmesh up` restarts a service that exited, and when it gives up.

Pure logic over a clock, no processes: the launcher reports exits and health to a
`Supervisor` and asks it which restarts are due. A service that exits is restarted after an
exponential backoff (`backoff`, doubling up to `backoff_max`); the doubling starts over once
the service has stayed healthy for a whole `window`. More than `max_restarts` restarts of one
service within `window` is a crash loop: the supervisor gives up, and `up` stops the mesh
rather than restart something that cannot stay up.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RestartPolicy:
    restart: bool = True  # False: the first exit stops the mesh (`--restart-policy never`)
    backoff: float = 0.5
    backoff_max: float = 10.0
    max_restarts: int = 5  # within `window`; 0: no limit
    window: float = 60.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before restart number `attempt` (1, 2, ...) of a run of exits."""
        return min(self.backoff_max, self.backoff * 2 ** (attempt - 1))


@dataclass
class RestartState:
    """One service's restart history, as the supervisor keeps it."""

    attempt: int = 0  # restarts since it last stayed healthy for a whole window
    total: int = 0  # restarts since `up` started
    recent: list[float] = field(default_factory=list)  # times of restarts within the window
    healthy_since: float | None = None  # None while starting, or dead
    restart_at: float | None = None  # a restart is pending, due then
    last_status: int | None = None


@dataclass(frozen=True)
class Restart:
    """Restart `name` after `delay` seconds; `attempt` counts the restarts of this run."""

    name: str
    status: int
    delay: float
    attempt: int

    def message(self) -> str:
        return (f"the {self.name} {describe_exit(self.status)}; restarting it in "
                f"{self.delay:.1f}s (attempt {self.attempt})")


@dataclass(frozen=True)
class GiveUp:
    """Stop the mesh: restarts are off, or `name` is crash-looping."""

    name: str
    status: int
    reason: str

    def message(self) -> str:
        return f"{self.reason}; stopping the mesh"


class Supervisor:
    """The restart decisions for a set of services; every time comes from `clock`."""

    def __init__(self, names: Iterable[str], policy: RestartPolicy,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self.clock = clock
        self.states = {name: RestartState() for name in names}

    def healthy(self, name: str) -> None:
        """`name` reports SERVING (repeated reports keep the first time)."""
        state = self.states[name]
        if state.healthy_since is None:
            state.healthy_since = self.clock()

    def exited(self, name: str, status: int) -> Restart | GiveUp:
        now, state, policy = self.clock(), self.states[name], self.policy
        state.last_status = status
        if not policy.restart:
            return GiveUp(name, status, f"the {name} {describe_exit(status)}")
        if state.healthy_since is not None and now - state.healthy_since >= policy.window:
            state.attempt = 0  # it stayed up for a whole window: not a crash loop
        state.healthy_since = None
        state.recent = [when for when in state.recent if now - when < policy.window]
        if policy.max_restarts and len(state.recent) >= policy.max_restarts:
            return GiveUp(name, status, (
                f"the {name} {describe_exit(status)}: {len(state.recent) + 1} exits within "
                f"{policy.window:g}s, past --max-restarts {policy.max_restarts}; giving up"))
        state.attempt += 1
        state.total += 1
        state.recent.append(now)
        delay = policy.delay(state.attempt)
        state.restart_at = now + delay
        return Restart(name, status, delay, state.attempt)

    def due(self) -> list[str]:
        """The services whose restart time has come; each is returned once."""
        now = self.clock()
        names = [name for name, state in self.states.items()
                 if state.restart_at is not None and state.restart_at <= now]
        for name in names:
            self.states[name].restart_at = None
        return names

    def pending(self) -> list[str]:
        """Services that are dead, waiting out their backoff."""
        return [name for name, state in self.states.items() if state.restart_at is not None]


def describe_exit(status: int) -> str:
    """Popen's returncode in words: a negative one is the signal that killed the process."""
    if status < 0:
        try:
            return f"was killed by {signal.Signals(-status).name} (status {status})"
        except ValueError:
            return f"was killed by signal {-status} (status {status})"
    return f"exited with status {status}"
