"""Script arguments and results for each bridge operation, shared by sync and async.

Each ``*_call`` returns ``(script source, keys, args)``; the bridges run it on their own
client and hand the reply to ``event_id_from`` or the error to ``translate_error``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from . import scripts
from .errors import (
    BridgeError,
    ClaimLost,
    IdempotencyKeyReused,
    InvalidPhaseMove,
    RunExists,
    RunNotFound,
    RunTerminal,
    TenantMismatch,
)
from .ids import format_event_id, new_epoch, now_ts
from .keys import idempotency_key, queue_key, request_key, run_keys
from .phases import CANCELLED, RECOVERING, RUNNING
from .records import (
    Record,
    check_phase,
    check_run_id,
    check_tenant,
    phase_records,
    row_record,
)

DEFAULT_MAXLEN = 100_000
DEFAULT_RETENTION_S = 604_800


@dataclass(frozen=True, slots=True)
class LogLimits:
    """How much of a run's log Redis keeps, for how long after its last write, and whether
    lifecycle changes are also written to the tenant's feed (not on Redis Cluster)."""

    maxlen: int = DEFAULT_MAXLEN
    retention_s: int = DEFAULT_RETENTION_S
    feed: bool = True
    # Durable appends (``failover``): each write waits until this many replicas have it.
    wait_replicas: int = 0
    wait_timeout_ms: int = 1000


@dataclass(frozen=True, slots=True)
class SourcePosition:
    """Where a line came from in a followed file, so a restarted follower skips it."""

    source: str
    offset: int
    next_offset: int


Call = tuple[str, list[str], list[Any]]


def _position_args(position: SourcePosition | None) -> list[Any]:
    if position is None:
        return ["", 0, 0]
    return [position.source, position.offset, position.next_offset]


def _feed_epoch(feed: bool) -> str:
    # A fresh epoch for the tenant feed, used by the script only if the feed is new; ''
    # tells the script to write no feed (Redis Cluster: the feed lives in another slot).
    return new_epoch() if feed else ""


def _queued_args(run_id: str, tenant: str, limits: LogLimits) -> list[Any]:
    """ARGV 1-9 shared by OPEN_RUN and SUBMIT: the new run and its ``queued`` record."""
    check_run_id(run_id)
    check_tenant(tenant)
    created_at, _ = now_ts()
    queued, _ = phase_records(run_id, "queued", None)
    return [
        tenant,
        created_at,
        new_epoch(),
        queued.data,
        queued.t_us,
        limits.maxlen,
        limits.retention_s,
        run_id,
        _feed_epoch(limits.feed),
    ]


def open_run_call(run_id: str, tenant: str, limits: LogLimits) -> Call:
    """Create the run in ``queued`` with its first record, or find it if it exists."""
    return scripts.OPEN_RUN, run_keys(run_id), _queued_args(run_id, tenant, limits)


IDEMPOTENCY_TTL_S = 86_400


def submit_call(
    run_id: str,
    tenant: str,
    request: bytes,
    limits: LogLimits,
    *,
    idempotency_digest: str | None = None,
    body_digest: str = "",
) -> Call:
    """Create the run ``queued``, keep its request and queue it, in one step.

    With ``idempotency_digest`` (the digest of the caller's ``Idempotency-Key``), a second
    submit under the same key creates nothing and names the first run instead.
    """
    idem = "" if idempotency_digest is None else idempotency_key(tenant, idempotency_digest)
    keys = [*run_keys(run_id), request_key(run_id), queue_key(), idem]
    args = [*_queued_args(run_id, tenant, limits), request, body_digest, IDEMPOTENCY_TTL_S]
    return scripts.SUBMIT, keys, args


def cancel_call(run_id: str, limits: LogLimits) -> Call:
    """Cancel a queued run at once, or ask the runner of a running one to cancel it."""
    check_run_id(run_id)
    phase_rec, terminal_rec = phase_records(run_id, CANCELLED, None)
    if terminal_rec is None:  # cancelled is terminal: phase_records always gives one
        raise RuntimeError("no terminal record for a cancel")
    updated_at, _ = now_ts()
    args = [
        phase_rec.data,
        terminal_rec.data,
        phase_rec.t_us,
        limits.maxlen,
        limits.retention_s,
        updated_at,
        run_id,
        _feed_epoch(limits.feed),
    ]
    return scripts.CANCEL, run_keys(run_id), args


def seq_field(seq: int) -> str:
    """The run meta field recording that the runner's row ``seq`` was written (its event
    number); it lives in meta so the row path reads and writes it with the other fields."""
    return f"s:{seq}"


def append_call(
    run_id: str,
    row: object,
    limits: LogLimits,
    seq: int | None = None,
    position: SourcePosition | None = None,
    record: Record | None = None,
    fence: str = "",
) -> Call:
    """Append one row; ``seq`` (or ``position``) makes a retry a no-op; a ``fence`` (from a
    work-queue claim) makes it refused once another worker has taken the run over."""
    rec = record if record is not None else row_record(row)
    if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int)):
        raise ValueError(f"seq must be an integer, got {type(seq).__name__}")
    updated_at, _ = now_ts()
    args = [
        "" if seq is None else seq_field(seq),
        rec.event,
        rec.data,
        rec.t_us,
        limits.maxlen,
        limits.retention_s,
        updated_at,
        *_position_args(position),
        fence,
    ]
    return scripts.APPEND_ROW, run_keys(run_id), args


def set_phase_call(
    run_id: str,
    phase: str,
    limits: LogLimits,
    halt_class: str | None = None,
    ts: str | None = None,
    position: SourcePosition | None = None,
    fence: str = "",
) -> Call:
    """Move the run to ``phase``; a terminal phase also writes the terminal record. A
    ``fence`` (from a work-queue claim) makes it refused once another worker holds the run."""
    phase, halt_class = check_phase(phase, halt_class)
    phase_rec, terminal_rec = phase_records(run_id, phase, halt_class, ts)
    updated_at, _ = now_ts()
    args = [
        phase,
        halt_class or "",
        phase_rec.data,
        b"" if terminal_rec is None else terminal_rec.data,
        phase_rec.t_us,
        limits.maxlen,
        limits.retention_s,
        updated_at,
        *_position_args(position),
        run_id,
        _feed_epoch(limits.feed),
        fence,
    ]
    return scripts.SET_PHASE, run_keys(run_id), args


def reepoch_call(run_id: str, seen_epoch: str) -> Call:
    """Give the run's log a new epoch unless another writer already did (``failover``)."""
    _, t_us = now_ts()
    return scripts.REEPOCH, run_keys(run_id), [seen_epoch, new_epoch(), t_us]


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What a script reported: the event id written (or first written), and if it was a repeat."""

    event_id: str | None
    duplicate: bool
    epoch: str = ""
    n: int = 0


def write_result(reply: Any) -> WriteResult:
    """Read a script's ``{epoch, n, duplicate}`` reply."""
    epoch_raw, n, dup = reply
    epoch = epoch_raw.decode() if isinstance(epoch_raw, bytes) else str(epoch_raw)
    event_id = format_event_id(epoch, int(n)) if int(n) > 0 else None
    return WriteResult(event_id=event_id, duplicate=bool(int(dup)), epoch=epoch, n=int(n))


def open_result(reply: Any) -> tuple[str, bool]:
    """Read OPEN_RUN's ``{phase, epoch, created}`` reply as (phase, created)."""
    phase_raw, _epoch, created = reply
    phase = phase_raw.decode() if isinstance(phase_raw, bytes) else str(phase_raw)
    return phase, bool(int(created))


_CODES: dict[str, type[BridgeError]] = {
    "NORUN": RunNotFound,
    "TERMINAL": RunTerminal,
    "BADMOVE": InvalidPhaseMove,
    "TENANT": TenantMismatch,
    "EXISTS": RunExists,
    "REUSED": IdempotencyKeyReused,
    "FENCED": ClaimLost,
}


def translate_error(exc: ResponseError, run_id: str) -> Exception:
    """Turn a script's ``CODE message`` error into the bridge's named error."""
    text = str(exc)
    code, _, message = text.partition(" ")
    kind = _CODES.get(code)
    if kind is None:
        return exc
    return kind(f"run {run_id!r}: {message}")


# --- The work queue's claims (see scripts.CLAIM, TAKEOVER, KEEPALIVE, RELEASE) -----------


@dataclass(frozen=True, slots=True)
class Claim:
    """What CLAIM or TAKEOVER did: ``outcome`` is ``held`` (the run is ours now, running),
    ``skip`` (terminal, or not waiting for a worker), ``gone`` (no such run) or ``alive``
    (the holder's lease still runs)."""

    outcome: str
    phase: str
    fence: str
    cancel_requested: bool
    tenant: str
    request: bytes
    resumed: bool

    @property
    def held(self) -> bool:
        """True when the run is now held by the caller."""
        return self.outcome == "held"


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def claim_result(reply: Any) -> Claim:
    """Read the ``{outcome, phase, fence, cancel, tenant, request, resumed}`` reply."""
    outcome, phase, fence, cancel, tenant, request, resumed = reply
    return Claim(
        outcome=_text(outcome),
        phase=_text(phase),
        fence=_text(fence),
        cancel_requested=bool(int(cancel)),
        tenant=_text(tenant),
        request=request if isinstance(request, bytes) else _text(request).encode(),
        resumed=bool(int(resumed)),
    )


def _move_data(run_id: str, phase: str) -> tuple[bytes, int]:
    rec, _terminal = phase_records(run_id, phase, None)
    return rec.data, rec.t_us


def claim_call(run_id: str, worker: str, lease_ms: int, limits: LogLimits) -> Call:
    """Take a run read fresh from the queue, if it waits for a worker."""
    check_run_id(run_id)
    running, t_us = _move_data(run_id, RUNNING)
    updated_at, _ = now_ts()
    args = [
        worker,
        lease_ms,
        running,
        t_us,
        limits.maxlen,
        limits.retention_s,
        updated_at,
        run_id,
        _feed_epoch(limits.feed),
    ]
    return scripts.CLAIM, [*run_keys(run_id), request_key(run_id)], args


def takeover_call(run_id: str, worker: str, lease_ms: int, limits: LogLimits) -> Call:
    """Take over a run whose holder went quiet, unless its lease still runs."""
    check_run_id(run_id)
    recovering, t_us = _move_data(run_id, RECOVERING)
    running, _ = _move_data(run_id, RUNNING)
    updated_at, _ = now_ts()
    args = [
        worker,
        lease_ms,
        recovering,
        running,
        t_us,
        limits.maxlen,
        limits.retention_s,
        updated_at,
        run_id,
        _feed_epoch(limits.feed),
    ]
    return scripts.TAKEOVER, [*run_keys(run_id), request_key(run_id)], args


@dataclass(frozen=True, slots=True)
class Beat:
    """What a keep-alive learnt: the run's phase and whether a cancel was asked for."""

    phase: str
    cancel_requested: bool


def keepalive_call(run_id: str, fence: str, lease_ms: int) -> Call:
    """Push the holder's lease on; refused (``ClaimLost``) once the fence moved."""
    return scripts.KEEPALIVE, run_keys(run_id), [fence, lease_ms]


def keepalive_result(reply: Any) -> Beat:
    """Read KEEPALIVE's ``{phase, cancel_requested}`` reply."""
    phase, cancel = reply
    return Beat(phase=_text(phase), cancel_requested=bool(int(cancel)))


def release_call(run_id: str, fence: str, limits: LogLimits) -> Call:
    """Hand a held run back: running -> recovering, no holder, a new fence."""
    recovering, t_us = _move_data(run_id, RECOVERING)
    updated_at, _ = now_ts()
    args = [
        fence,
        recovering,
        t_us,
        limits.maxlen,
        limits.retention_s,
        updated_at,
        run_id,
        _feed_epoch(limits.feed),
    ]
    return scripts.RELEASE, run_keys(run_id), args


def release_result(reply: Any) -> str:
    """Read RELEASE's ``{outcome}``: released, terminal, lost or gone."""
    return _text(reply[0])
