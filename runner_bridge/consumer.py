"""The work queue's consumer, without I/O: what the sync and asyncio shells both decide.

Submitted runs wait as entries ``{run_id}`` in one Redis stream read through the consumer
group ``workers``. A shell (``jobs.py``, ``ajobs.py``) runs the commands this core names
and hands it the replies; the core keeps the scan cursor, parses entries, builds the claim
scripts' calls and reads their outcomes, so the two shells differ only in ``await``.

A consumer alternates two sources: the pending entries of dead workers (``XAUTOCLAIM``
past the claim timeout, then ``TAKEOVER``), scanned at least every ``scan_interval_s``,
and new entries (``XREADGROUP ... >`` blocking at most ``block_ms``, then ``CLAIM``).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from runlog.calls import (
    Beat,
    Call,
    Claim,
    LogLimits,
    claim_call,
    keepalive_call,
    release_call,
    takeover_call,
)
from runlog.errors import InvalidWorker
from runlog.keys import QUEUE_GROUP, queue_key
from runlog.phases import is_terminal
from runlog.records import check_run_id

DEFAULT_CLAIM_TIMEOUT_S = 30.0
# A blocking read never waits longer than this: the service's clients time out at 10 s,
# and a worker told to stop notices it between two reads.
MAX_BLOCK_S = 5.0
# The keep-alive is also how a job learns of a cancel request: at least this often.
MAX_KEEPALIVE_S = 1.0
# Bound on XAUTOCLAIM round trips in one scan of the pending entries.
MAX_SCAN_ROUNDS = 64

_WORKER_RE = re.compile(r"[A-Za-z0-9_.:@/-]{1,128}")


class Stop(Protocol):
    """What a consumer asks to know whether to stop: a ``threading`` or ``asyncio`` Event."""

    def is_set(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class QueueSettings:
    """How long a claim lives without a keep-alive, and the paces derived from it."""

    claim_timeout_s: float = DEFAULT_CLAIM_TIMEOUT_S

    def __post_init__(self) -> None:
        timeout = self.claim_timeout_s
        if not (isinstance(timeout, int | float) and 0 < timeout < float("inf")):
            raise ValueError(f"claim_timeout_s must be a positive number, got {timeout!r}")

    @classmethod
    def from_env(cls) -> QueueSettings:
        """``MANTIS_CLAIM_TIMEOUT_S`` (seconds, default 30)."""
        raw = os.environ.get("MANTIS_CLAIM_TIMEOUT_S", "")
        if raw == "":
            return cls()
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if not 0 < value < float("inf"):
            raise ValueError(f"MANTIS_CLAIM_TIMEOUT_S must be a positive number, got {raw!r}")
        return cls(claim_timeout_s=value)

    @property
    def lease_ms(self) -> int:
        """How long a claim (or its last keep-alive) holds the run: the claim timeout."""
        return max(1, round(self.claim_timeout_s * 1000))

    @property
    def block_ms(self) -> int:
        """The longest blocking read: half the timeout, at most ``MAX_BLOCK_S``."""
        return max(10, round(min(MAX_BLOCK_S, self.claim_timeout_s / 2) * 1000))

    @property
    def scan_interval_s(self) -> float:
        """How often dead workers' entries are looked for when the last scan found none."""
        return self.block_ms / 1000

    @property
    def keepalive_s(self) -> float:
        """Seconds between keep-alives: three per timeout, and at least one a second."""
        return min(self.claim_timeout_s / 3, MAX_KEEPALIVE_S)


def check_worker(worker: object) -> str:
    """Return ``worker`` or raise ``InvalidWorker``; it names a consumer of the group."""
    if not isinstance(worker, str) or _WORKER_RE.fullmatch(worker) is None:
        raise InvalidWorker(
            f"worker name {str(worker)[:80]!r} must match [A-Za-z0-9_.:@/-]{{1,128}}"
        )
    return worker


def default_worker() -> str:
    """``<host>-<pid>``: unique among live processes, readable in the run's meta."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", os.uname().nodename)[:100] or "host"
    return f"{host}-{os.getpid()}"


@dataclass(frozen=True, slots=True)
class Entry:
    """One queue entry: its stream id and the run it names (None when malformed)."""

    entry_id: str
    run_id: str | None


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _entry(entry_id: Any, fields: Any) -> Entry:
    raw = (fields or {}).get(b"run_id") if isinstance(fields, dict) else None
    run_id: str | None = None
    if raw is not None:
        try:
            run_id = check_run_id(_text(raw))
        except ValueError:
            run_id = None
    return Entry(entry_id=_text(entry_id), run_id=run_id)


def parse_request(raw: bytes) -> dict[str, Any]:
    """The submitted body kept with the run; ``{}`` when there is none (an opened run)."""
    if not raw:
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return body if isinstance(body, dict) else {}


HELD, FINISHED, LOST, GONE, RELEASED = "held", "finished", "lost", "gone", "released"


@dataclass(slots=True)
class JobState:
    """A held job's bookkeeping, shared by the job, its run handle and its keep-alive."""

    entry: Entry
    run_id: str
    worker: str
    fence: str
    tenant: str
    request: dict[str, Any]
    cancel_requested: bool
    resumed: bool
    status: str = HELD
    phase: str = "running"

    @property
    def held(self) -> bool:
        """True while this worker still holds the run and it is not finished."""
        return self.status == HELD

    def beat(self, beat: Beat) -> bool:
        """Take a keep-alive's news; returns whether to keep the claim alive."""
        self.cancel_requested = self.cancel_requested or beat.cancel_requested
        self.phase = beat.phase
        # Finished by someone else (the phase CLI, say): nothing left to keep alive; the
        # entry is acknowledged when the job is settled.
        return self.held and not is_terminal(beat.phase)


class ConsumerCore:
    """One consumer's decisions: what to read next, how to claim it, what an outcome means."""

    def __init__(
        self,
        worker: str,
        settings: QueueSettings,
        limits: LogLimits,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.worker = check_worker(worker)
        self.settings = settings
        self.limits = limits
        self.queue = queue_key()
        self.group = QUEUE_GROUP
        self._clock = clock
        self._cursor = "0-0"
        self._next_scan = clock()  # a new consumer first looks for runs left by the dead
        self._rounds = 0

    # --- reading the queue -----------------------------------------------------------

    def group_create_args(self) -> dict[str, Any]:
        """XGROUP CREATE from id 0 with MKSTREAM: runs submitted before any worker count."""
        return {"name": self.queue, "groupname": self.group, "id": "0", "mkstream": True}

    def scan_due(self) -> bool:
        """True when dead workers' pending entries should be looked for now."""
        return self._clock() >= self._next_scan

    def autoclaim_args(self) -> dict[str, Any]:
        """XAUTOCLAIM of one entry idle past the claim timeout, from the scan cursor."""
        return {
            "name": self.queue,
            "groupname": self.group,
            "consumername": self.worker,
            "min_idle_time": self.settings.lease_ms,
            "start_id": self._cursor,
            "count": 1,
        }

    def scanned(self, reply: Any) -> list[Entry]:
        """Entries an XAUTOCLAIM moved to us; schedules the next scan once a pass ends."""
        cursor, claimed = _text(reply[0]), reply[1]
        entries = [_entry(entry_id, fields) for entry_id, fields in claimed if entry_id]
        self._cursor = cursor
        self._rounds += 1
        if cursor == "0-0" or self._rounds >= MAX_SCAN_ROUNDS:
            self._cursor = "0-0"
            self._rounds = 0
            self._next_scan = self._clock() + self.settings.scan_interval_s
        return entries

    def read_args(self) -> dict[str, Any]:
        """XREADGROUP of one new entry, blocking at most ``block_ms``."""
        return {
            "groupname": self.group,
            "consumername": self.worker,
            "streams": {self.queue: ">"},
            "count": 1,
            "block": self.settings.block_ms,
        }

    @staticmethod
    def read(reply: Any) -> list[Entry]:
        """Entries of an XREADGROUP reply (none when the block timed out)."""
        entries: list[Entry] = []
        for _stream, items in reply or []:
            entries.extend(_entry(entry_id, fields) for entry_id, fields in items)
        return entries

    # --- claims ----------------------------------------------------------------------

    def claim_call(self, entry: Entry, *, takeover: bool) -> Call:
        """CLAIM for a fresh entry, TAKEOVER for one a dead worker left pending."""
        if entry.run_id is None:
            raise ValueError("a malformed entry has no run to claim")
        build = takeover_call if takeover else claim_call
        return build(entry.run_id, self.worker, self.settings.lease_ms, self.limits)

    def job_state(self, entry: Entry, claim: Claim) -> JobState:
        """The state of a job whose claim succeeded."""
        if entry.run_id is None or not claim.held:
            raise ValueError("only a held claim makes a job")
        return JobState(
            entry=entry,
            run_id=entry.run_id,
            worker=self.worker,
            fence=claim.fence,
            tenant=claim.tenant,
            request=parse_request(claim.request),
            cancel_requested=claim.cancel_requested,
            resumed=claim.resumed,
        )

    @staticmethod
    def drop_entry(claim: Claim) -> bool:
        """Whether an entry that was not taken leaves the queue: its run is done or gone.

        ``alive`` entries stay: they now sit in our pending list, and the holder's next
        keep-alive claims them back.
        """
        return claim.outcome in ("skip", "gone")

    def keepalive_call(self, state: JobState) -> Call:
        """The keep-alive of a held job."""
        return keepalive_call(state.run_id, state.fence, self.settings.lease_ms)

    def keepalive_claim_args(self, state: JobState) -> dict[str, Any]:
        """XCLAIM ... JUSTID of the job's own entry: resets its idle time, keeps it ours."""
        return {
            "name": self.queue,
            "groupname": self.group,
            "consumername": self.worker,
            "min_idle_time": 0,
            "message_ids": [state.entry.entry_id],
            "justid": True,
        }

    def release_call(self, state: JobState) -> Call:
        """Hand a held run back (running -> recovering, no holder)."""
        return release_call(state.run_id, state.fence, self.limits)

    def pending_args(self) -> dict[str, Any]:
        """XPENDING of this consumer's entries (one is enough to know it has any)."""
        return {
            "name": self.queue,
            "groupname": self.group,
            "min": "-",
            "max": "+",
            "count": 1,
            "consumername": self.worker,
        }


def is_nogroup(exc: Exception) -> bool:
    """The queue's group is missing (the stream was deleted): create it and read again."""
    return str(exc).startswith("NOGROUP")


def is_busygroup(exc: Exception) -> bool:
    """XGROUP CREATE of a group that exists: what every worker but the first sees."""
    return str(exc).startswith("BUSYGROUP")


class JobView:
    """What a job tells its runner, read from its state: shared by ``Job`` and ``AsyncJob``,
    which add the I/O (their ``run`` and ``release``)."""

    _state: JobState

    @property
    def run_id(self) -> str:
        return self._state.run_id

    @property
    def worker(self) -> str:
        return self._state.worker

    @property
    def request(self) -> dict[str, Any]:
        return self._state.request

    @property
    def fence(self) -> str:
        return self._state.fence

    @property
    def resumed(self) -> bool:
        """True when the run had a holder before (taken over, or handed back): rows of the
        earlier holder may exist; ``run.published(seq)`` tells which."""
        return self._state.resumed

    @property
    def cancel_requested(self) -> bool:
        """True once a cancel was asked for: finish the run as ``cancelled``."""
        return self._state.cancel_requested

    @property
    def lost(self) -> bool:
        """True once another worker took the run over: stop working on it."""
        return self._state.status == LOST

    @property
    def held(self) -> bool:
        """True while the run is this worker's and not finished."""
        return self._state.held
