"""The model-worker interface: what the scheduler talks to, whatever does the math."""

from __future__ import annotations

from abc import ABC, abstractmethod

from radixmesh.shared.step import StepPlan, StepResult, WorkerInfo


class ModelWorker(ABC):
    """Executes step plans in order, deciding nothing.

    Invariants every worker keeps:
    - `info()` is fixed for the worker's lifetime; the scheduler sizes itself from it.
    - `execute` applies a plan exactly as `shared/step.py` orders it and returns one token for
      every sampling extend and every decode, in plan order.
    - A plan that contradicts the worker's state (unknown request, a chunk that does not start
      at the request's KV length) raises PlanError and changes nothing the next plan relies on.
    - Per-request state lives until the request's id comes back in `released`.
    Workers are chosen by name from the registry in `services/worker/__init__.py`.
    """

    name: str = ""

    @abstractmethod
    def info(self) -> WorkerInfo: ...

    @abstractmethod
    def execute(self, plan: StepPlan) -> StepResult: ...

    @property
    @abstractmethod
    def num_requests(self) -> int:
        """Requests whose state the worker holds."""
