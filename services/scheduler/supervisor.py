"""Keeps the scheduler attached to a worker and a detokenizer, and says when it is ready.

Plain asyncio over two small link interfaces (gRPC lives in `worker_link.py` and
`detokenizer_link.py`), so every transition can be driven by fakes in tests:

- start: the first worker and detokenizer within --peer-timeout, else PeerLostError (exit);
  the worker's model id is pinned then: a later worker must serve the same model.
- worker lost (stream broke or ended, or a step's result overdue: `worker_link.py`): NOT
  SERVING; the loop ends every running request with UNAVAILABLE (pages freed, accounting
  checked at once); queued requests wait up to --worker-lost-timeout, then fail the same
  way; new requests fail at once. Then: reconnect (handshake, refusing another protocol or
  model, with the reason logged), rebuild the Scheduler for the new worker (`recovery.py`),
  re-attach the hicache pool, SERVING again.
- detokenizer lost: NOT SERVING; nobody can read any output, so every request ends; then
  reconnect and SERVING again. Losing the hicache service never changes readiness
  (`hicache_link.py` degrades to misses).
Invariants: SERVING exactly while both links are up; at most one worker stream is attached
to the loop; each loss is handled once, however many places notice it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from radixmesh.services.scheduler.config import SchedulerConfig
from radixmesh.services.scheduler.loop import SchedulerLoop, WorkerLostError
from radixmesh.services.scheduler.recovery import misfits, rebuild_scheduler
from radixmesh.services.scheduler.scheduler import Scheduler
from radixmesh.shared.mesh_info import ModelInfo
from radixmesh.shared.mesh_protocol import HandshakeError, Hello, unavailable_finish
from radixmesh.shared.span_recorder import DISABLED, SpanRecorder
from radixmesh.shared.step import StepPlan, StepResult, WorkerInfo
from radixmesh.shared.token_batch import TokenBatch

logger = logging.getLogger(__name__)
RETRY_MIN_S = 0.2
RETRY_MAX_S = 1.0


class PeerLostError(ConnectionError):
    """A peer the scheduler cannot start without never became usable."""


class PeerNotReadyError(ConnectionError):
    """No usable peer there yet (not listening, not SERVING, stopped): try again soon."""


class WorkerStreamLike(Protocol):
    async def send(self, plan: StepPlan) -> None: ...
    async def receive(self) -> StepResult: ...
    async def ended(self) -> str: ...
    def close(self) -> None: ...


class WorkerSessionLike(Protocol):
    hello: Hello
    info: WorkerInfo
    stream: WorkerStreamLike


class WorkerConnector(Protocol):
    address: str

    async def connect(self, expected_model: str | None) -> WorkerSessionLike: ...


class DetokenizerConnector(Protocol):
    address: str

    async def connect(self) -> Hello: ...
    async def ended(self) -> str: ...
    async def publish(self, batch: TokenBatch) -> None: ...
    def close(self) -> None: ...


class HiCacheRunner(Protocol):
    wake: Callable[[], None]

    def kick(self) -> None: ...
    async def run(self) -> None: ...


class LinkSupervisor:
    def __init__(self, config: SchedulerConfig, worker: WorkerConnector,
                 detokenizer: DetokenizerConnector,
                 make_hicache: Callable[[Scheduler], HiCacheRunner | None] = lambda s: None,
                 recorder: SpanRecorder = DISABLED) -> None:
        self.config = config
        self._worker = worker
        self._detokenizer = detokenizer
        self._make_hicache = make_hicache
        self._recorder = recorder
        self.set_serving: Callable[[bool], Awaitable[None]] | None = None  # the health's
        self.loop: SchedulerLoop | None = None
        self.model_info: ModelInfo | None = None
        self.model_id: str | None = None  # pinned by the first worker
        self.serving = False
        self._session: WorkerSessionLike | None = None
        self._hicache: asyncio.Task | None = None
        self._worker_down: str | None = None  # why, while lost
        self._detokenizer_down: str | None = None
        self._lost = asyncio.Event()  # the loop hit a WorkerLostError
        self._lost_reason = ""
        self._lost_running = 0
        self._expiry: asyncio.TimerHandle | None = None

    # ---- start and run ---------------------------------------------------------------------

    async def start(self) -> SchedulerLoop:
        """Connects both peers (within --peer-timeout) and builds the Scheduler and its loop."""
        deadline = time.monotonic() + self.config.peer_timeout
        session = await self._connect_worker(deadline)
        await self._connect_detokenizer(deadline)
        scheduler = Scheduler(self.config, session.info)
        self.loop = SchedulerLoop(scheduler, session.stream.send, session.stream.receive,
                                  self._detokenizer.publish, self.config.max_inflight_steps,
                                  recorder=self._recorder)
        self.loop.on_worker_lost = self._on_worker_lost
        self._use(session, scheduler)
        return self.loop

    async def run(self) -> None:
        """Runs the loop and keeps both links up until cancelled; raises what a bug raises."""
        assert self.loop is not None, "start() first"
        await self._update_serving()
        tasks = [asyncio.create_task(self.loop.run(), name="scheduler-loop"),
                 asyncio.create_task(self._keep_worker(), name="worker-link"),
                 asyncio.create_task(self._keep_detokenizer(), name="detokenizer-link")]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            self._stop_hicache()
            if self._session is not None:
                self._session.stream.close()
            self._detokenizer.close()

    # ---- the worker ------------------------------------------------------------------------

    async def _keep_worker(self) -> None:
        while True:
            self._lose_worker(await self._worker_loss())
            await self._update_serving()
            session = await self._connect_worker(None)
            self._replace_worker(session)
            await self._update_serving()

    async def _worker_loss(self) -> str:
        """Until the worker is lost: its stream ended (seen even while the loop idles), or the
        loop met an error on it (a broken write, an overdue result). Returns why."""
        assert self._session is not None
        ended = asyncio.ensure_future(self._session.stream.ended())
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            await asyncio.wait([ended, lost], return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
            lost.cancel()
        if self._lost.is_set():  # the loop's reason says more than the stream's end
            self._lost.clear()
            return self._lost_reason
        return ended.result()

    def _on_worker_lost(self, error: WorkerLostError) -> None:
        """The loop met `error` and detaches the worker right after this returns."""
        assert self.loop is not None
        self._lost_reason = str(error)
        self._lost_running = len(self.loop.scheduler.running)
        self._lost.set()

    def _lose_worker(self, reason: str) -> None:
        loop, session = self.loop, self._session
        assert loop is not None and session is not None
        running = len(loop.scheduler.running)
        if not loop.detach_worker(reason):  # the loop did it: it counted for us
            running = self._lost_running
        session.stream.close()
        self._session = None
        self._worker_down = reason
        loop.scheduler.check_integrity()  # raises PageLeakError: a leak is a bug, loud
        timeout = self.config.worker_lost_timeout
        logger.warning("worker lost: %s. NOT SERVING; %d running requests failed with "
                       "UNAVAILABLE, page accounting checked; %d queued requests wait up to "
                       "%gs for a worker at %s", reason, running, len(loop.scheduler.waiting),
                       timeout, self._worker.address)
        self._expiry = asyncio.get_running_loop().call_later(
            timeout, loop.fail_waiting, f"{reason}; no worker came back within {timeout:g}s")

    def _replace_worker(self, session: WorkerSessionLike) -> None:
        loop = self.loop
        assert loop is not None
        for rid in misfits(loop.scheduler, session.info):
            loop.abort(rid, unavailable_finish("the new worker's KV pool cannot hold it"))
        self._use(session, rebuild_scheduler(loop.scheduler, self.config, session.info))

    def _use(self, session: WorkerSessionLike, scheduler: Scheduler) -> None:
        """Attaches `session`'s stream and `scheduler` (sized for it) to the loop, with a new
        hicache link (the new worker maps no host pool yet)."""
        loop = self.loop
        assert loop is not None
        if self._expiry is not None:
            self._expiry.cancel()
        self._stop_hicache()
        link = self._make_hicache(scheduler)
        if loop.scheduler is not scheduler:
            loop.attach_worker(scheduler, session.stream.send, session.stream.receive)
        loop.set_progress_hook(link.kick if link is not None else None)
        if link is not None:
            link.wake = loop.wake
            self._hicache = asyncio.create_task(link.run(), name="hicache-link")
        self._session, self._worker_down = session, None
        self.model_id = self.model_id or session.hello.model_id
        self.model_info = ModelInfo.from_worker(session.info)
        info = session.info
        logger.info("worker at %s: %s (instance %s); %d pages of %d tokens, KV %s",
                    self._worker.address, session.hello.describe(), session.hello.instance_id,
                    info.num_pages, info.page_size, session.hello.layout or "none")

    def _stop_hicache(self) -> None:
        if self._hicache is not None:
            self._hicache.cancel()
            self._hicache = None

    async def _connect_worker(self, deadline: float | None) -> WorkerSessionLike:
        return await _retry(lambda: self._worker.connect(self.model_id), "worker",
                            self._worker.address, deadline)

    # ---- the detokenizer -------------------------------------------------------------------

    async def _keep_detokenizer(self) -> None:
        loop = self.loop
        assert loop is not None
        while True:
            reason = await self._detokenizer.ended()
            self._detokenizer.close()
            self._detokenizer_down = reason
            requests = len(loop.scheduler.running) + len(loop.scheduler.waiting)
            loop.fail_all(reason)
            logger.warning("detokenizer lost: %s. NOT SERVING; %d requests failed with "
                           "UNAVAILABLE", reason, requests)
            await self._update_serving()
            await self._connect_detokenizer(None)
            self._detokenizer_down = None
            await self._update_serving()

    async def _connect_detokenizer(self, deadline: float | None) -> None:
        hello = await _retry(self._detokenizer.connect, "detokenizer",
                             self._detokenizer.address, deadline)
        logger.info("detokenizer at %s: %s", self._detokenizer.address, hello.describe())

    # ---- readiness -------------------------------------------------------------------------

    async def _update_serving(self) -> None:
        reason = self._worker_down or self._detokenizer_down
        assert self.loop is not None
        self.loop.unavailable = reason
        if (reason is None) == self.serving:
            return
        self.serving = reason is None
        logger.log(logging.INFO if self.serving else logging.WARNING, "scheduler %s",
                   "SERVING" if self.serving else f"NOT SERVING: {reason}")
        if self.set_serving is not None:
            await self.set_serving(self.serving)


async def _retry(attempt: Callable[[], Awaitable], name: str, address: str,
                 deadline: float | None):
    """Repeats `attempt` until it succeeds, with a short backoff: a peer not ready yet is
    waited for quietly, a refused one logged once per reason. Past `deadline` (None: never),
    PeerLostError."""
    delay, refused = RETRY_MIN_S, ""
    while True:
        try:
            return await attempt()
        except HandshakeError as error:
            if str(error) != refused:
                logger.error("%s", error)
                refused = str(error)
            last = str(error)
        except PeerNotReadyError as error:
            logger.debug("the %s at %s is not ready: %s", name, address, error)
            last = str(error)
        if deadline is not None and time.monotonic() > deadline:
            raise PeerLostError(f"no usable {name} at {address}: {last}")
        await asyncio.sleep(delay)
        delay = min(2 * delay, RETRY_MAX_S)
