"""``Bridge.jobs``: runs taken from the work queue, one at a time, kept alive by a thread.

The decisions live in ``consumer.py``; this is the sync shell around them. One iterator
holds at most one job: when the loop moves on (or the iterator is closed) while the job's
run is not finished, the run is handed back to the queue for another worker.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError, ResponseError

from runlog.calls import claim_result, keepalive_result, release_result, seq_field
from runlog.errors import ClaimLost, RunNotFound
from runlog.keys import dedup_key, meta_key
from runlog.phases import is_terminal

from .bridge import RunHandle
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
    from .bridge import Bridge

log = logging.getLogger("mantis.worker")


class ClaimedRun(RunHandle):
    """The run handle of a job: every write carries the claim's fence; finishing the run
    acknowledges its queue entry."""

    def __init__(self, consumer: _Consumer, state: JobState) -> None:
        super().__init__(consumer.bridge, state.run_id, state.tenant, "running", fence=state.fence)
        self._consumer = consumer
        self._state = state

    def append(self, row: dict[str, Any], *, seq: int | None = None) -> str:
        """Publish one row under the claim; ``ClaimLost`` once another worker has the run."""
        try:
            return super().append(row, seq=seq)
        except ClaimLost:
            self._consumer.lost(self._state)
            raise

    def published(self, seq: int) -> bool:
        """True when row ``seq`` was already written (by this holder or an earlier one)."""
        client, field = self._bridge.client, seq_field(seq)
        if client.hexists(meta_key(self.run_id), field):
            return True
        # A run created before the records moved into meta may hold older ones in dedup.
        return bool(client.hexists(dedup_key(self.run_id), field))

    def set_phase(self, phase: str, *, halt_class: str | None = None) -> str:
        """Move the run under the claim; a terminal move also takes it off the queue."""
        try:
            event_id = super().set_phase(phase, halt_class=halt_class)
        except ClaimLost:
            self._consumer.lost(self._state)
            raise
        if is_terminal(phase):
            self._consumer.finished(self._state)
        return event_id


class Job(JobView):
    """One run taken from the queue: ``run`` (already running), ``request`` (the submitted
    body), ``cancel_requested`` (kept current by the keep-alive)."""

    def __init__(self, consumer: _Consumer, state: JobState) -> None:
        self._consumer = consumer
        self._state = state
        self.run = ClaimedRun(consumer, state)


    def release(self) -> None:
        """Hand the run back to the queue now (running -> recovering) for another worker."""
        self._consumer.settle(self._state)


class _Keepalive:
    """A thread that keeps one job's claim alive until the job is settled or lost."""

    def __init__(self, consumer: _Consumer, state: JobState) -> None:
        self._consumer = consumer
        self._state = state
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name=f"keepalive-{state.run_id}", daemon=True
        )
        self._thread.start()

    def _loop(self) -> None:
        interval = self._consumer.core.settings.keepalive_s
        while not self._stop.wait(interval):
            if not self._consumer.beat(self._state):
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()


class _Consumer:
    """The sync shell: runs the commands ``ConsumerCore`` names on the bridge's client."""

    def __init__(self, bridge: Bridge, worker: str, settings: QueueSettings) -> None:
        self.bridge = bridge
        self.core = ConsumerCore(worker, settings, bridge.limits)
        self._keepalives: dict[int, _Keepalive] = {}
        self._lock = threading.Lock()

    def ensure_group(self) -> None:
        try:
            self.bridge.client.xgroup_create(**self.core.group_create_args())
        except ResponseError as exc:
            if not is_busygroup(exc):
                raise

    def next_job(self, stop: Stop | None) -> Job | None:
        """Block for the next run this consumer can take; None once ``stop`` is set."""
        core, client = self.core, self.bridge.client
        while stop is None or not stop.is_set():
            if core.scan_due():
                for entry in core.scanned(client.xautoclaim(**core.autoclaim_args())):
                    job = self._take(entry, takeover=True)
                    if job is not None:
                        return job
                continue
            try:
                reply = client.xreadgroup(**core.read_args())
            except ResponseError as exc:
                if not is_nogroup(exc):
                    raise
                self.ensure_group()
                continue
            for entry in core.read(reply):
                if stop is not None and stop.is_set():
                    self._requeue(entry)  # read after the stop: another worker takes it
                    return None
                job = self._take(entry, takeover=False)
                if job is not None:
                    return job
        return None

    def _take(self, entry: Entry, *, takeover: bool) -> Job | None:
        if entry.run_id is None:
            log.warning("dropping malformed queue entry %s", entry.entry_id)
            self._ack(entry)
            return None
        call = self.core.claim_call(entry, takeover=takeover)
        claim = claim_result(self.bridge._run(entry.run_id, call))
        if not claim.held:
            if self.core.drop_entry(claim):
                self._ack(entry)
            return None
        state = self.core.job_state(entry, claim)
        job = Job(self, state)
        with self._lock:
            self._keepalives[id(state)] = _Keepalive(self, state)
        how = "took over" if takeover else "claimed"
        log.info("%s %s run %r (fence %s)", self.core.worker, how, state.run_id, state.fence)
        return job

    def beat(self, state: JobState) -> bool:
        """One keep-alive; returns whether to go on."""
        if not state.held:
            return False
        try:
            beat = keepalive_result(self.bridge._run(state.run_id, self.core.keepalive_call(state)))
            if not state.beat(beat):
                return False
            self.bridge.client.xclaim(**self.core.keepalive_claim_args(state))
        except ClaimLost:
            self._mark(state, LOST)
            log.warning("%s lost run %r to another worker", self.core.worker, state.run_id)
            return False
        except RunNotFound:
            self._mark(state, GONE)
            return False
        except RedisError as exc:  # the store blinked: try again next beat, the lease holds
            log.warning("keep-alive of run %r failed: %s", state.run_id, exc)
        return True

    def _mark(self, state: JobState, status: str) -> None:
        with self._lock:
            if state.status == HELD:
                state.status = status

    def _stop_keepalive(self, state: JobState) -> None:
        with self._lock:
            keepalive = self._keepalives.pop(id(state), None)
        if keepalive is not None:
            keepalive.stop()

    def lost(self, state: JobState) -> None:
        """A write was refused: another worker holds the run now. Its entry is not ours."""
        self._mark(state, LOST)
        self._stop_keepalive(state)

    def finished(self, state: JobState) -> None:
        """The run reached a terminal phase under our claim: take its entry off the queue."""
        self._mark(state, FINISHED)
        self._stop_keepalive(state)
        try:
            self._ack(state.entry)
        except RedisError as exc:  # the run is finished all the same; a later scan drops it
            log.warning("could not take run %r off the queue: %s", state.run_id, exc)

    def settle(self, state: JobState) -> None:
        """The job is no longer worked on: hand back a run that is not finished."""
        self._stop_keepalive(state)
        if state.status == GONE:
            self._ack(state.entry)
        if state.status != HELD:
            return
        outcome = release_result(self.bridge._run(state.run_id, self.core.release_call(state)))
        state.status = RELEASED
        if outcome == "released":
            log.info("%s handed run %r back", self.core.worker, state.run_id)
            self._requeue(state.entry)
        elif outcome in ("terminal", "gone"):
            self._ack(state.entry)

    def _ack(self, entry: Entry) -> None:
        pipe = self.bridge.client.pipeline(transaction=False)
        pipe.xack(self.core.queue, self.core.group, entry.entry_id)
        pipe.xdel(self.core.queue, entry.entry_id)
        pipe.execute()

    def _requeue(self, entry: Entry) -> None:
        # A new entry first, then the old one off: a crash in between leaves two entries,
        # and the second claim of the run finds it taken and drops its entry.
        if entry.run_id is not None:
            self.bridge.client.xadd(self.core.queue, {"run_id": entry.run_id})
        self._ack(entry)

    def close(self) -> None:
        """Leave the group's consumer list when nothing is pending for us any more."""
        try:
            if not self.bridge.client.xpending_range(**self.core.pending_args()):
                self.bridge.client.xgroup_delconsumer(
                    self.core.queue, self.core.group, self.core.worker
                )
        except RedisError as exc:
            log.debug("could not remove consumer %s: %s", self.core.worker, exc)


def iter_jobs(
    bridge: Bridge, worker: str, *, stop: Stop | None = None, settings: QueueSettings | None = None
) -> Generator[Job, None, None]:
    """Yield jobs as runs are taken from the queue, until ``stop`` is set."""
    consumer = _Consumer(bridge, worker, settings or QueueSettings.from_env())
    consumer.ensure_group()
    job: Job | None = None
    try:
        while True:
            job = consumer.next_job(stop)
            if job is None:
                return
            yield job
            consumer.settle(job._state)
            job = None
    finally:
        if job is not None:
            consumer.settle(job._state)
        consumer.close()
