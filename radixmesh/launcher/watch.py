"""The loop `radixmesh up` runs once the mesh is up: reap exits, restart, watch health.

It never blocks for long (a health probe of a restarting service waits at most `POLL_S`), so
Ctrl-C and SIGTERM stop the mesh promptly, also while a restart's backoff is pending: a
pending restart is only a time in the supervisor, not a sleeping thread.
"""

from __future__ import annotations

import logging
import threading

from radixmesh.launcher.processes import POLL_S, ServiceGroup
from radixmesh.launcher.supervisor import GiveUp, Supervisor
from radixmesh.shared.grpc_service import is_serving

logger = logging.getLogger(__name__)
WATCH_INTERVAL_S = 0.2


def say(message: str) -> None:
    """What `up` tells its user (on stdout, as its endpoints: tests and scripts read it)."""
    print(f"radixmesh up: {message}", flush=True)


def watch(group: ServiceGroup, supervisor: Supervisor, stop: threading.Event) -> int:
    """Runs until `stop` is set (returns 0) or the supervisor gives up (returns 1). Every
    service is taken as healthy on entry: `up` waited for each before calling this."""
    for child in group.children:
        supervisor.healthy(child.name)
    while not stop.wait(WATCH_INTERVAL_S):
        if not _handle_exits(group, supervisor):
            return 1
        for name in supervisor.due():
            pid = group.restart(name)
            say(f"restarted the {name} (pid {pid}, attempt {supervisor.states[name].attempt})")
        _probe_restarted(group, supervisor, stop)
    return 0


def _handle_exits(group: ServiceGroup, supervisor: Supervisor) -> bool:
    """Reports each new exit to the supervisor; False once it gives up."""
    for child, status in group.exits():
        decision = supervisor.exited(child.name, status)
        say(decision.message())
        if isinstance(decision, GiveUp):
            return False
    return True


def _probe_restarted(group: ServiceGroup, supervisor: Supervisor,
                     stop: threading.Event) -> None:
    """Health of the restarted services not yet seen SERVING: the backoff starts over only
    after a service has stayed healthy for a window, so it must be seen healthy."""
    for child in group.children:
        state = supervisor.states[child.name]
        if state.healthy_since is not None or child.process.poll() is not None:
            continue
        if stop.is_set():
            return
        if is_serving(child.command.health_address, timeout=POLL_S,
                      tls=child.command.probe_tls):
            supervisor.healthy(child.name)
            say(f"the {child.name} is serving again (pid {child.process.pid}, "
                f"restart {state.total})")
