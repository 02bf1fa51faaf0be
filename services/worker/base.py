"""The model-worker interface: what the scheduler talks to, whatever does the math."""

from __future__ import annotations

from abc import ABC, abstractmethod

from radixmesh.shared.step import StepPlan, StepResult, WorkerInfo


class LaunchedStep:
    """A step whose work is queued on the device; its tokens may not be on the host yet."""

    def ready(self) -> bool:
        """True when `ModelWorker.finish` would not wait on the device. Callable from any
        thread."""
        return True


class FinishedStep(LaunchedStep):
    """A step that was complete when launched: workers that compute on the host."""

    def __init__(self, result: StepResult) -> None:
        self.result = result


class ModelWorker(ABC):
    """Executes step plans in order, deciding nothing.

    Invariants every worker keeps:
    - `info()` is fixed for the worker's lifetime; the scheduler sizes itself from it.
    - `execute` applies a plan exactly as `shared/step.py` orders it and returns one token for
      every sampling extend and every decode, in plan order.
    - `launch` then `finish` is `execute` in two halves: `launch(N + 1)` may be called before
      `finish(N)`, and plan N + 1 may decode the tokens step N samples; steps are finished in
      launch order. This is how a GPU worker prepares step N + 1 while step N runs.
    - A plan that contradicts the worker's state (unknown request, a chunk that does not start
      at the request's KV length) raises PlanError and changes nothing the next plan relies on.
    - Per-request state lives until the request's id comes back in `released`.
    Workers are chosen by name from the registry in `services/worker/worker_registry.py`.
    """

    name: str = ""
    on_gpu: bool = False  # computes on a CUDA device (what a benchmark reports as its device)

    @abstractmethod
    def info(self) -> WorkerInfo: ...

    @abstractmethod
    def execute(self, plan: StepPlan) -> StepResult: ...

    def launch(self, plan: StepPlan) -> LaunchedStep:
        return FinishedStep(self.execute(plan))

    def finish(self, step: LaunchedStep) -> StepResult:
        assert isinstance(step, FinishedStep), "a worker that overrides launch overrides finish"
        return step.result

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Releases what the worker maps beyond its own memory (the host KV pool); idempotent.
        Call it after the last step."""

    @property
    @abstractmethod
    def num_requests(self) -> int:
        """Requests whose state the worker holds."""
