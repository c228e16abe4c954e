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
    InvalidPhaseMove,
    RunNotFound,
    RunTerminal,
    TenantMismatch,
)
from .ids import format_event_id, new_epoch, now_ts
from .keys import run_keys
from .records import Record, check_phase, check_run_id, phase_records, row_record

DEFAULT_MAXLEN = 100_000
DEFAULT_RETENTION_S = 604_800


@dataclass(frozen=True, slots=True)
class LogLimits:
    """How much of a run's log Redis keeps, and for how long after its last write."""

    maxlen: int = DEFAULT_MAXLEN
    retention_s: int = DEFAULT_RETENTION_S


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


def open_run_call(run_id: str, tenant: str, limits: LogLimits) -> Call:
    """Create the run in ``queued`` with its first record, or find it if it exists."""
    check_run_id(run_id)
    if not isinstance(tenant, str) or not tenant:
        raise ValueError("tenant must be a non-empty string")
    created_at, _ = now_ts()
    queued, _ = phase_records(run_id, "queued", None)
    args = [tenant, created_at, new_epoch(), queued.data, queued.t_us]
    return scripts.OPEN_RUN, run_keys(run_id), [*args, limits.maxlen, limits.retention_s]


def append_call(
    run_id: str,
    row: object,
    limits: LogLimits,
    seq: int | None = None,
    position: SourcePosition | None = None,
    record: Record | None = None,
) -> Call:
    """Append one row; ``seq`` (or ``position``) makes a retry a no-op."""
    rec = record if record is not None else row_record(row)
    if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int)):
        raise ValueError(f"seq must be an integer, got {type(seq).__name__}")
    updated_at, _ = now_ts()
    args = [
        "" if seq is None else f"s:{seq}",
        rec.event,
        rec.data,
        rec.t_us,
        limits.maxlen,
        limits.retention_s,
        updated_at,
        *_position_args(position),
    ]
    return scripts.APPEND_ROW, run_keys(run_id), args


def set_phase_call(
    run_id: str,
    phase: str,
    limits: LogLimits,
    halt_class: str | None = None,
    ts: str | None = None,
    position: SourcePosition | None = None,
) -> Call:
    """Move the run to ``phase``; a terminal phase also writes the terminal record."""
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
    ]
    return scripts.SET_PHASE, run_keys(run_id), args


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What a script reported: the event id written (or first written), and if it was a repeat."""

    event_id: str | None
    duplicate: bool


def write_result(reply: Any) -> WriteResult:
    """Read a script's ``{epoch, n, duplicate}`` reply."""
    epoch_raw, n, dup = reply
    epoch = epoch_raw.decode() if isinstance(epoch_raw, bytes) else str(epoch_raw)
    event_id = format_event_id(epoch, int(n)) if int(n) > 0 else None
    return WriteResult(event_id=event_id, duplicate=bool(int(dup)))


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
}


def translate_error(exc: ResponseError, run_id: str) -> Exception:
    """Turn a script's ``CODE message`` error into the bridge's named error."""
    text = str(exc)
    code, _, message = text.partition(" ")
    kind = _CODES.get(code)
    if kind is None:
        return exc
    return kind(f"run {run_id!r}: {message}")
