"""Background JIT kernel builds: they run beside the caller, a failed one is logged and left
for its first use, and the sampling backends name theirs."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import threading

import pytest

from radixmesh.services.worker.kernel_builds import BackgroundKernelBuilds
from radixmesh.services.worker.sampling import SAMPLING_BACKENDS


def test_builds_run_beside_the_caller_and_wait_returns_when_all_have_ended() -> None:
    caller_went_on = threading.Event()
    ran: list[str] = []

    def first() -> None:  # ends only once the caller has gone on past the constructor
        assert caller_went_on.wait(10)
        ran.append("first")

    builds = BackgroundKernelBuilds([first, lambda: ran.append("second")])
    caller_went_on.set()
    assert builds.wait() is True
    assert ran == ["first", "second"]
    assert builds.failures == [] and builds.seconds > 0


def test_a_failed_build_is_logged_and_the_rest_still_run(
        caplog: pytest.LogCaptureFixture) -> None:
    ran: list[str] = []

    def broken() -> None:
        raise RuntimeError("nvcc: not found")

    with caplog.at_level(logging.WARNING):
        builds = BackgroundKernelBuilds([broken, lambda: ran.append("next")])
        builds.wait()
    assert ran == ["next"]
    assert [str(error) for error in builds.failures] == ["nvcc: not found"]
    assert "RuntimeError: nvcc: not found" in caplog.text


def test_no_builds_start_no_thread() -> None:
    builds = BackgroundKernelBuilds([])
    assert builds.wait() is False
    assert not builds._thread.is_alive() and builds._thread.ident is None


def test_the_pytorch_sampler_has_no_kernel_to_build() -> None:
    assert SAMPLING_BACKENDS.get("pytorch").kernel_builds() == []


@pytest.mark.skipif(importlib.util.find_spec("flashinfer") is None,
                    reason="needs flashinfer (its sampling module's build also needs nvcc)")
def test_flashinfer_names_its_sampling_module_getter() -> None:
    [build] = SAMPLING_BACKENDS.get("flashinfer").kernel_builds()
    assert build is importlib.import_module("flashinfer.sampling").get_sampling_module
