"""``AsyncBridge.jobs``: the asyncio shell of the work queue's consumer (see ``jobs.py``).

Same decisions (``consumer.py``), same rules: one job at a time per iterator, a run not
finished when the loop moves on is handed back; the keep-alive is a task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError, ResponseError

from runlog.calls import claim_result, keepalive_result, release_result, seq_field
from runlog.errors import ClaimLost, RunNotFound
from runlog.keys import dedup_key, meta_key
from runlog.phases import is_terminal

from .bridge import AsyncRunHandle
from .consumer import (
    FINISHED,
    GONE,
    HELD,
    LOST,
    RELEASED,
    ConsumerCore,
    Entry,
    JobState,
    JobView,
    QueueSettings,
    Stop,
    is_busygroup,
    is_nogroup,
)

if TYPE_CHECKING:
    from .bridge import AsyncBridge

log = logging.getLogger("mantis.worker")


class AsyncClaimedRun(AsyncRunHandle):
    """The run handle of an async job: fenced writes; finishing acknowledges the entry."""

    def __init__(self, consumer: _AsyncConsumer, state: JobState) -> None:
        super().__init__(consumer.bridge, state.run_id, state.tenant, "running", fence=state.fence)
        self._consumer = consumer
        self._state = state

    async def append(self, row: dict[str, Any], *, seq: int | None = None) -> str:
        """Publish one row under the claim; ``ClaimLost`` once another worker has the run."""
        try:
            return await super().append(row, seq=seq)
        except ClaimLost:
            await self._consumer.lost(self._state)
            raise

    async def published(self, seq: int) -> bool:
        """True when row ``seq`` was already written (by this holder or an earlier one)."""
        client, field = self._bridge.client, seq_field(seq)
        if await client.hexists(meta_key(self.run_id), field):
            return True
        # A run created before the records moved into meta may hold older ones in dedup.
        return bool(await client.hexists(dedup_key(self.run_id), field))

    async def set_phase(self, phase: str, *, halt_class: str | None = None) -> str:
        """Move the run under the claim; a terminal move also takes it off the queue."""
        try:
            event_id = await super().set_phase(phase, halt_class=halt_class)
        except ClaimLost:
            await self._consumer.lost(self._state)
            raise
        if is_terminal(phase):
            await self._consumer.finished(self._state)
        return event_id


class AsyncJob(JobView):
    """One run taken from the queue (see ``jobs.Job``); ``release`` is awaitable."""

    def __init__(self, consumer: _AsyncConsumer, state: JobState) -> None:
        self._consumer = consumer
        self._state = state
        self.run = AsyncClaimedRun(consumer, state)


    async def release(self) -> None:
        """Hand the run back to the queue now (running -> recovering) for another worker."""
        await self._consumer.settle(self._state)


class _AsyncConsumer:
    """The asyncio shell: runs the commands ``ConsumerCore`` names on the bridge's client."""

    def __init__(self, bridge: AsyncBridge, worker: str, settings: QueueSettings) -> None:
        self.bridge = bridge
        self.core = ConsumerCore(worker, settings, bridge.limits)
        self._keepalives: dict[int, asyncio.Task[None]] = {}

    async def ensure_group(self) -> None:
        await self.bridge._connect()
        self.core.limits = self.bridge.limits  # known once connected (cluster or not)
        try:
            await self.bridge.client.xgroup_create(**self.core.group_create_args())
        except ResponseError as exc:
            if not is_busygroup(exc):
                raise

    async def next_job(self, stop: Stop | None) -> AsyncJob | None:
        """Wait for the next run this consumer can take; None once ``stop`` is set."""
        core, client = self.core, self.bridge.client
        while stop is None or not stop.is_set():
            if core.scan_due():
                for entry in core.scanned(await client.xautoclaim(**core.autoclaim_args())):
                    job = await self._take(entry, takeover=True)
                    if job is not None:
                        return job
                continue
            try:
                reply = await client.xreadgroup(**core.read_args())
            except ResponseError as exc:
                if not is_nogroup(exc):
                    raise
                await self.ensure_group()
                continue
            for entry in core.read(reply):
                if stop is not None and stop.is_set():
                    await self._requeue(entry)  # read after the stop: another worker takes it
                    return None
                job = await self._take(entry, takeover=False)
                if job is not None:
                    return job
        return None

    async def _take(self, entry: Entry, *, takeover: bool) -> AsyncJob | None:
        if entry.run_id is None:
            log.warning("dropping malformed queue entry %s", entry.entry_id)
            await self._ack(entry)
            return None
        call = self.core.claim_call(entry, takeover=takeover)
        claim = claim_result(await self.bridge._run(entry.run_id, call))
        if not claim.held:
            if self.core.drop_entry(claim):
                await self._ack(entry)
            return None
        state = self.core.job_state(entry, claim)
        job = AsyncJob(self, state)
        self._keepalives[id(state)] = asyncio.create_task(
            self._keepalive(state), name=f"keepalive-{state.run_id}"
        )
        how = "took over" if takeover else "claimed"
        log.info("%s %s run %r (fence %s)", self.core.worker, how, state.run_id, state.fence)
        return job

    async def _keepalive(self, state: JobState) -> None:
        interval = self.core.settings.keepalive_s
        while True:
            await asyncio.sleep(interval)
            if not await self.beat(state):
                return

    async def beat(self, state: JobState) -> bool:
        """One keep-alive; returns whether to go on."""
        if not state.held:
            return False
        try:
            reply = await self.bridge._run(state.run_id, self.core.keepalive_call(state))
            if not state.beat(keepalive_result(reply)):
                return False
            await self.bridge.client.xclaim(**self.core.keepalive_claim_args(state))
        except ClaimLost:
            _mark(state, LOST)
            log.warning("%s lost run %r to another worker", self.core.worker, state.run_id)
            return False
        except RunNotFound:
            _mark(state, GONE)
            return False
        except RedisError as exc:  # the store blinked: try again next beat, the lease holds
            log.warning("keep-alive of run %r failed: %s", state.run_id, exc)
        return True

    async def _stop_keepalive(self, state: JobState) -> None:
        task = self._keepalives.pop(id(state), None)
        if task is None or task is asyncio.current_task():
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def lost(self, state: JobState) -> None:
        """A write was refused: another worker holds the run now. Its entry is not ours."""
        _mark(state, LOST)
        await self._stop_keepalive(state)

    async def finished(self, state: JobState) -> None:
        """The run reached a terminal phase under our claim: take its entry off the queue."""
        _mark(state, FINISHED)
        await self._stop_keepalive(state)
        try:
            await self._ack(state.entry)
        except RedisError as exc:  # the run is finished all the same; a later scan drops it
            log.warning("could not take run %r off the queue: %s", state.run_id, exc)

    async def settle(self, state: JobState) -> None:
        """The job is no longer worked on: hand back a run that is not finished."""
        await self._stop_keepalive(state)
        if state.status == GONE:
            await self._ack(state.entry)
        if state.status != HELD:
            return
        reply = await self.bridge._run(state.run_id, self.core.release_call(state))
        outcome = release_result(reply)
        state.status = RELEASED
        if outcome == "released":
            log.info("%s handed run %r back", self.core.worker, state.run_id)
            await self._requeue(state.entry)
        elif outcome in ("terminal", "gone"):
            await self._ack(state.entry)

    async def _ack(self, entry: Entry) -> None:
        pipe = self.bridge.client.pipeline(transaction=False)
        pipe.xack(self.core.queue, self.core.group, entry.entry_id)
        pipe.xdel(self.core.queue, entry.entry_id)
        await pipe.execute()

    async def _requeue(self, entry: Entry) -> None:
        # A new entry first, then the old one off (see jobs._Consumer._requeue).
        if entry.run_id is not None:
            await self.bridge.client.xadd(self.core.queue, {"run_id": entry.run_id})
        await self._ack(entry)

    async def close(self) -> None:
        """Leave the group's consumer list when nothing is pending for us any more."""
        client = self.bridge.client
        try:
            if not await client.xpending_range(**self.core.pending_args()):
                await client.xgroup_delconsumer(self.core.queue, self.core.group, self.core.worker)
        except RedisError as exc:
            log.debug("could not remove consumer %s: %s", self.core.worker, exc)


def _mark(state: JobState, status: str) -> None:
    if state.status == HELD:
        state.status = status


async def aiter_jobs(
    bridge: AsyncBridge,
    worker: str,
    *,
    stop: Stop | None = None,
    settings: QueueSettings | None = None,
) -> AsyncGenerator[AsyncJob, None]:
    """Yield jobs as runs are taken from the queue, until ``stop`` is set."""
    consumer = _AsyncConsumer(bridge, worker, settings or QueueSettings.from_env())
    await consumer.ensure_group()
    job: AsyncJob | None = None
    try:
        while True:
            job = await consumer.next_job(stop)
            if job is None:
                return
            yield job
            await consumer.settle(job._state)
            job = None
    finally:
        if job is not None:
            # Settling must finish even when the iterator is closed by a cancellation.
            await asyncio.shield(consumer.settle(job._state))
        await consumer.close()
