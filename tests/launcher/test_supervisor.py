"""The restart decisions of `radixmesh up`, on a fake clock: backoff, its reset after a healthy
window, the crash-loop limit, `--restart-policy never`, and the flags that set them."""

from __future__ import annotations

import argparse
import signal

import pytest

from radixmesh.launcher import add_cli_args, restart_policy
from radixmesh.launcher.mesh_plan import UpConfig
from radixmesh.launcher.supervisor import (
    GiveUp,
    Restart,
    RestartPolicy,
    Supervisor,
    describe_exit,
)
from radixmesh.shared.cli_args import config_from_args

KILLED = -signal.SIGKILL


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def supervisor(**policy: object) -> tuple[Supervisor, FakeClock]:
    clock = FakeClock()
    watched = Supervisor(["worker", "scheduler"], RestartPolicy(**policy), clock)
    for name in watched.states:
        watched.healthy(name)  # as `up` does once the mesh is up
    return watched, clock


def crash_and_restart(watched: Supervisor, clock: FakeClock, name: str = "worker") -> Restart:
    """An exit, the backoff waited out, and the restart that follows (never seen healthy)."""
    decision = watched.exited(name, KILLED)
    assert isinstance(decision, Restart), decision
    clock.advance(decision.delay)
    assert watched.due() == [name]
    return decision


def test_the_backoff_doubles_from_the_first_delay_up_to_the_cap():
    watched, clock = supervisor(backoff=0.5, backoff_max=10.0, max_restarts=0)
    delays = [crash_and_restart(watched, clock).delay for _ in range(8)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    assert watched.states["worker"].total == 8


def test_a_restart_is_due_only_once_its_backoff_has_passed_and_only_once():
    watched, clock = supervisor(backoff=2.0)
    decision = watched.exited("worker", 1)
    assert decision == Restart("worker", 1, 2.0, 1)
    assert watched.pending() == ["worker"] and watched.due() == []
    clock.advance(1.9)
    assert watched.due() == []
    clock.advance(0.1)
    assert watched.due() == ["worker"]
    assert watched.due() == [] and watched.pending() == []


def test_each_service_keeps_its_own_backoff():
    watched, clock = supervisor(backoff=1.0, max_restarts=0)
    for _ in range(3):
        crash_and_restart(watched, clock, "worker")
    assert crash_and_restart(watched, clock, "scheduler").delay == 1.0
    assert watched.states["worker"].attempt == 3


def test_a_service_healthy_for_a_whole_window_starts_its_backoff_over():
    watched, clock = supervisor(backoff=0.5, window=60.0, max_restarts=0)
    for _ in range(4):
        crash_and_restart(watched, clock)
    watched.healthy("worker")
    clock.advance(59.0)  # healthy, but not for a whole window: still backing off
    assert crash_and_restart(watched, clock).delay == 8.0
    watched.healthy("worker")
    clock.advance(60.0)
    assert crash_and_restart(watched, clock).delay == 0.5


def test_exits_of_a_service_never_seen_healthy_keep_backing_off():
    watched, clock = supervisor(backoff=0.5, window=60.0, max_restarts=0)
    crash_and_restart(watched, clock)
    clock.advance(600.0)  # restarted, alive a long while, but never SERVING
    assert crash_and_restart(watched, clock).delay == 1.0


def test_more_restarts_than_allowed_within_the_window_is_a_crash_loop():
    watched, clock = supervisor(backoff=0.5, max_restarts=3, window=60.0)
    for _ in range(3):
        crash_and_restart(watched, clock)
    decision = watched.exited("worker", 1)
    assert isinstance(decision, GiveUp)
    assert decision.message() == ("the worker exited with status 1: 4 exits within 60s, past "
                                  "--max-restarts 3; giving up; stopping the mesh")
    assert watched.pending() == []


def test_restarts_spread_wider_than_the_window_are_not_a_crash_loop():
    watched, clock = supervisor(backoff=0.5, backoff_max=1.0, max_restarts=2, window=10.0)
    for _ in range(10):
        assert isinstance(watched.exited("worker", KILLED), Restart)
        clock.advance(6.0)  # the oldest restart leaves the window before the third comes
        assert watched.due() == ["worker"]


def test_max_restarts_zero_never_gives_up():
    watched, clock = supervisor(max_restarts=0, window=1000.0)
    for _ in range(100):
        crash_and_restart(watched, clock)


def test_restart_policy_never_stops_the_mesh_on_the_first_exit():
    watched, _ = supervisor(restart=False)
    decision = watched.exited("worker", 3)
    assert decision == GiveUp("worker", 3, "the worker exited with status 3")
    assert decision.message() == "the worker exited with status 3; stopping the mesh"


def test_a_restart_message_names_the_service_the_status_and_the_attempt():
    watched, clock = supervisor(backoff=0.5)
    crash_and_restart(watched, clock)
    assert watched.exited("worker", KILLED).message() == (
        "the worker was killed by SIGKILL (status -9); restarting it in 1.0s (attempt 2)")


def test_exit_statuses_in_words():
    assert describe_exit(0) == "exited with status 0"
    assert describe_exit(-signal.SIGSEGV) == "was killed by SIGSEGV (status -11)"
    assert describe_exit(-200) == "was killed by signal 200 (status -200)"


def parse_up(*argv: str) -> UpConfig:
    parser = argparse.ArgumentParser()
    add_cli_args(parser)
    return config_from_args(UpConfig, parser.parse_args(list(argv)))


def test_the_flags_of_up_make_the_restart_policy():
    assert restart_policy(parse_up()) == RestartPolicy()
    up = parse_up("--restart-policy", "never", "--restart-backoff", "1", "--restart-backoff-max",
                  "4", "--max-restarts", "0", "--restart-window", "30")
    assert restart_policy(up) == RestartPolicy(restart=False, backoff=1.0, backoff_max=4.0,
                                               max_restarts=0, window=30.0)


@pytest.mark.parametrize("fields", [{"restart_policy": "sometimes"},
                                    {"restart_backoff": 20.0, "restart_backoff_max": 10.0},
                                    {"restart_backoff": -1.0}, {"max_restarts": -1},
                                    {"restart_window": 0.0}])
def test_bad_restart_flags_are_refused(fields: dict):
    with pytest.raises(ValueError, match="--restart|--max-restarts"):
        UpConfig(**fields)
