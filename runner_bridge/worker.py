"""``python -m runner_bridge work``: a worker process that takes runs from the queue.

``concurrency`` consumer slots each pull one job at a time through ``AsyncBridge.jobs`` and
hand it to a handler: the demo runner (``demo_handler``) or a runner's own async function.
Shutdown (SIGTERM, SIGINT): no new jobs are taken at once; jobs in hand may finish within
the grace period; whatever is still running then is cancelled and its run handed back to
the queue (``recovering``), where another worker takes it at once. A second signal hands
back at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from runlog.errors import ClaimLost, RunTerminal

from . import worker_metrics
from .ajobs import AsyncJob
from .bridge import AsyncBridge
from .consumer import QueueSettings, check_worker
from .demo_plan import InvalidPlan, plan_of, plan_rows

log = logging.getLogger("mantis.worker")

Handler = Callable[[AsyncJob], Coroutine[Any, Any, None]]

DEFAULT_PACE_S = 1.0
DEFAULT_GRACE_S = 10.0


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """How a worker process runs: its name, slots, shutdown grace and queue settings."""

    worker: str
    concurrency: int = 1
    grace_s: float = DEFAULT_GRACE_S
    settings: QueueSettings = field(default_factory=QueueSettings)

    def slot_names(self) -> list[str]:
        """One consumer name per slot (``name`` alone for a single slot)."""
        check_worker(self.worker)
        if self.concurrency == 1:
            return [self.worker]
        return [check_worker(f"{self.worker}.{i}") for i in range(1, self.concurrency + 1)]


@dataclass(slots=True)
class WorkerReport:
    """What a worker did, printed when it exits."""

    taken: int = 0
    finished: int = 0
    handed_back: int = 0
    lost: int = 0
    failed: int = 0


class Worker:
    """The worker's slots and its shutdown; ``run`` returns once every slot has stopped."""

    def __init__(self, bridge: AsyncBridge, handler: Handler, options: WorkerOptions) -> None:
        self._bridge = bridge
        self._handler = handler
        self._options = options
        self.stop = asyncio.Event()  # take no more jobs
        self.hand_back = asyncio.Event()  # stop working on the jobs in hand
        self.report = WorkerReport()

    async def run(self) -> WorkerReport:
        """Work until shut down."""
        slots = [
            asyncio.create_task(self._slot(name), name=f"slot-{name}")
            for name in self._options.slot_names()
        ]
        try:
            await asyncio.wait(slots, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            # One slot failing (the store gone, say) stops the others: their runs in hand
            # are handed back as their iterators close, and the failure is raised as is.
            for slot in slots:
                slot.cancel()
            await asyncio.wait(slots)
        for slot in slots:
            if not slot.cancelled() and (exc := slot.exception()) is not None:
                raise exc
        return self.report

    def shutdown(self) -> None:
        """First call: take no new jobs, hand back what is left after the grace period.
        Second call: hand back now."""
        if self.stop.is_set():
            self.hand_back.set()
            return
        self.stop.set()
        asyncio.get_running_loop().call_later(self._options.grace_s, self.hand_back.set)

    async def _slot(self, name: str) -> None:
        jobs = self._bridge.jobs(name, stop=self.stop, settings=self._options.settings)
        async with contextlib.aclosing(jobs):
            async for job in jobs:
                self.report.taken += 1
                worker_metrics.record_taken(job.resumed)
                await self._work(job)
                if self.hand_back.is_set():
                    break  # the iterator hands the job back as it closes

    async def _work(self, job: AsyncJob) -> None:
        task = asyncio.create_task(self._handler(job), name=f"run-{job.run_id}")
        waiter = asyncio.create_task(self.hand_back.wait())
        try:
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            if not task.done():
                task.cancel()
                await asyncio.wait({task})
        if task.cancelled():
            self.report.handed_back += 1
            worker_metrics.record_outcome("handed_back")
            log.info("handing run %r back (shutting down)", job.run_id)
            return
        exc = task.exception()
        if isinstance(exc, ClaimLost) or job.lost:
            self.report.lost += 1
            worker_metrics.record_outcome("lost")
            why = f"write refused: {exc}" if exc is not None else "taken over by another worker"
            log.warning("dropped run %r (%s)", job.run_id, why)
            return
        if exc is not None:
            log.error("handler failed on run %r", job.run_id, exc_info=exc)
        if job.held:
            # A handler that raised or returned without finishing would fail the same way
            # on any worker: the run halts instead of going round the queue for ever.
            self.report.failed += 1
            worker_metrics.record_outcome("failed")
            with contextlib.suppress(ClaimLost, RunTerminal):
                await job.run.finish("halted", halt_class="runner_error")
            return
        self.report.finished += 1
        worker_metrics.record_outcome("finished")


def demo_handler(pace_s: float = DEFAULT_PACE_S) -> Handler:
    """The demo runner: plays the task suite's ``_micro_plan`` at ``pace_s`` per step."""

    async def handle(job: AsyncJob) -> None:
        try:
            steps = plan_rows(plan_of(job.request))
        except InvalidPlan as exc:
            await job.run.append({"kind": "log", "level": "error", "message": str(exc)}, seq=0)
            await job.run.finish("halted", halt_class="invalid_plan")
            return
        seq = 0
        for rows in steps:
            if job.cancel_requested:
                await job.run.finish("cancelled")
                return
            # A resumed run (taken over, or handed back) replays its plan: rows an earlier
            # holder wrote are skipped without the pause, and ``seq`` keeps them single.
            replayed = job.resumed and await job.run.published(seq + len(rows))
            for row in rows:
                seq += 1
                await job.run.append(row, seq=seq)
            if not replayed:
                await asyncio.sleep(pace_s)
        await job.run.finish("cancelled" if job.cancel_requested else "complete")

    return handle


def load_handler(spec: str) -> Handler:
    """``module:function`` naming an ``async def handler(job)``; ``ValueError`` says why not."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--handler {spec!r} must be MODULE:FUNCTION")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"--handler {spec!r}: cannot import {module_name!r}: {exc}") from None
    handler: Any = getattr(module, attr, None)
    if handler is None:
        raise ValueError(f"--handler {spec!r}: {module_name!r} has no {attr!r}")
    if not inspect.iscoroutinefunction(handler):
        raise ValueError(f"--handler {spec!r} must be an async function taking the job")
    return handler  # type: ignore[no-any-return]
