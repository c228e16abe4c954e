"""Turning a runner's row or phase move into the exact record the log stores.

Pure functions, shared by the sync and asyncio bridges: validation happens here, before
anything reaches Redis, so a refused row writes nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from .errors import InvalidPhase, InvalidRow, InvalidRunId, InvalidTenant
from .ids import is_valid_run_id, now_ts, parse_ts_us
from .phases import HALTED, PHASES, RESERVED_EVENT_NAMES, TERMINAL_PHASES

# A row larger than this is refused: one SSE event must stay well under a client's backlog
# bound, and a runner that writes megabytes per step has a bug worth hearing about.
MAX_ROW_BYTES = 1_048_576

_EVENT_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True, slots=True)
class Record:
    """One log entry ready for the scripts: SSE event name, JSON data, ts in microseconds."""

    event: str
    data: bytes
    t_us: int


TENANT_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def check_tenant(tenant: object) -> str:
    """Return ``tenant`` or raise ``InvalidTenant``; tenant names become parts of keys."""
    if not isinstance(tenant, str) or TENANT_RE.fullmatch(tenant) is None:
        raise InvalidTenant(f"tenant {str(tenant)[:80]!r} must match [A-Za-z0-9_.-]{{1,64}}")
    return tenant


def check_run_id(run_id: str) -> str:
    """Return ``run_id`` or raise ``InvalidRunId`` naming it."""
    if not isinstance(run_id, str) or not is_valid_run_id(run_id):
        raise InvalidRunId(f"run id {run_id!r} must match [A-Za-z0-9_-]{{1,128}}")
    return run_id


def _label(row: dict[str, Any]) -> tuple[str, object]:
    """The field that names a row and its value: ``kind``, or ``type`` lacking a kind."""
    kind = row.get("kind")
    if kind is not None:
        return "kind", kind
    return "type", row.get("type")


def event_name_for(row: dict[str, Any]) -> str:
    """The SSE event name of a row: its ``kind``, else ``type``, else ``message``.

    Anything that is not a short token becomes ``message``, so no runner value can
    break the SSE framing.
    """
    _field, name = _label(row)
    if isinstance(name, str) and _EVENT_NAME_RE.fullmatch(name):
        return name
    return "message"


def row_record(row: object) -> Record:
    """Validate a runner row and return its record; ``InvalidRow`` says what is wrong."""
    if not isinstance(row, dict):
        raise InvalidRow(f"a row must be a JSON object, got {type(row).__name__}")
    field, label = _label(row)
    if isinstance(label, str) and label in RESERVED_EVENT_NAMES:
        raise InvalidRow(
            f"row {field} {label!r} is reserved for the service's own lifecycle events"
        )
    ts = row.get("ts")
    if ts is None:
        stamped, t_us = now_ts()
        row = {**row, "ts": stamped}
    elif isinstance(ts, str):
        try:
            t_us = parse_ts_us(ts)
        except ValueError:
            raise InvalidRow(f"row ts {ts[:64]!r} is not an ISO-8601 timestamp") from None
    else:
        raise InvalidRow(f"row ts must be an ISO-8601 string, got {type(ts).__name__}")
    try:
        data = orjson.dumps(row)
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise InvalidRow(f"row cannot be encoded as JSON: {exc}") from None
    if len(data) > MAX_ROW_BYTES:
        raise InvalidRow(f"row is {len(data)} bytes; the limit is {MAX_ROW_BYTES}")
    return Record(event=event_name_for(row), data=data, t_us=t_us)


def check_phase(phase: object, halt_class: object) -> tuple[str, str | None]:
    """Validate a phase name and its halt_class; return them."""
    if not isinstance(phase, str) or phase not in PHASES:
        shown = repr(phase)[:64]
        raise InvalidPhase(f"unknown phase {shown}; phases are {', '.join(PHASES)}")
    if halt_class is not None and not isinstance(halt_class, str):
        raise InvalidPhase(f"halt_class must be a string, got {type(halt_class).__name__}")
    if halt_class is not None and phase != HALTED:
        raise InvalidPhase(f"halt_class is only for the halted phase, not {phase!r}")
    return phase, halt_class


def phase_records(
    run_id: str, phase: str, halt_class: str | None, ts: str | None = None
) -> tuple[Record, Record | None]:
    """The ``phase`` record of a move and, for a terminal phase, the ``terminal`` record."""
    stamped, t_us = now_ts()
    if ts is not None:
        try:
            t_us = parse_ts_us(ts)
            stamped = ts
        except ValueError:
            raise InvalidPhase(f"phase ts {ts[:64]!r} is not an ISO-8601 timestamp") from None
    body: dict[str, Any] = {"phase": phase, "run_id": run_id, "ts": stamped}
    if phase == HALTED:
        body["halt_class"] = halt_class
    phase_rec = Record(event="phase", data=orjson.dumps(body), t_us=t_us)
    if phase not in TERMINAL_PHASES:
        return phase_rec, None
    terminal = {"phase": phase, "run_id": run_id, "halt_class": halt_class}
    return phase_rec, Record(event="terminal", data=orjson.dumps(terminal), t_us=t_us)
