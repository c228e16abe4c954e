"""Event ids, cursors and timestamps: how a position in a run's log is written and read.

An event id is ``<epoch>-<n>``: ``epoch`` names one incarnation of the log (base-36
milliseconds of its creation and 3 random characters) and ``n`` is the event's 1-based position in
it, zero-padded to 10 digits. Ids are therefore unique, strictly increasing within a run
both as numbers and as strings, and an id issued by a log that was lost and re-created
is recognised by its epoch rather than silently misread.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime

_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"
_ID_RE = re.compile(r"([0-9a-z]{11,12})-([0-9]{10,19})")
RUN_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")


def new_epoch(now_ms: int | None = None) -> str:
    """A fresh log epoch: creation time in base-36 milliseconds (8) plus 3 random characters.

    The random part keeps two incarnations of a log apart even when the second is created
    within the same millisecond as the first.
    """
    value = int(time.time() * 1000) if now_ms is None else now_ms
    digits = ""
    while value:
        value, rem = divmod(value, 36)
        digits = _BASE36[rem] + digits
    return digits.rjust(8, "0") + "".join(secrets.choice(_BASE36) for _ in range(3))


def format_event_id(epoch: str, n: int) -> str:
    """The SSE ``id:`` of event number ``n`` in the log incarnation ``epoch``."""
    return f"{epoch}-{n:010d}"


def is_valid_run_id(run_id: str) -> bool:
    """True when ``run_id`` matches the contract's ``[A-Za-z0-9_-]{1,128}``."""
    return RUN_ID_RE.fullmatch(run_id) is not None


@dataclass(frozen=True, slots=True)
class IdCursor:
    """Resume exactly after event ``n`` of log ``epoch``."""

    epoch: str
    n: int
    raw: str


@dataclass(frozen=True, slots=True)
class TimeCursor:
    """Skip events whose ``ts`` is at or before ``t_us`` (microseconds since the epoch, UTC)."""

    t_us: int
    raw: str


Cursor = IdCursor | TimeCursor | None


def parse_cursor(raw: str) -> Cursor:
    """Read a cursor: an emitted event id, an ISO-8601 timestamp, or empty (from the start).

    Raises ``ValueError`` naming the cursor when it is none of these.
    """
    text = raw.strip()
    if not text:
        return None
    match = _ID_RE.fullmatch(text)
    if match:
        return IdCursor(epoch=match.group(1), n=int(match.group(2)), raw=text)
    try:
        return TimeCursor(t_us=parse_ts_us(text), raw=text)
    except ValueError:
        raise ValueError(
            f"cursor {raw[:80]!r} is neither an event id from this service nor an "
            "ISO-8601 timestamp"
        ) from None


def parse_ts_us(ts: str) -> int:
    """Microseconds since the Unix epoch of an ISO-8601 timestamp; no zone means UTC."""
    parsed = datetime.fromisoformat(ts)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    delta = parsed - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def now_ts() -> tuple[str, int]:
    """Now as (UTC ISO-8601 with milliseconds and ``Z``, microseconds since the epoch).

    Both are truncated to the millisecond, so the stamped ``ts`` used as a timestamp cursor
    means exactly that event ("at or before" includes it).
    """
    t_us = time.time_ns() // 1_000_000 * 1000
    moment = datetime.fromtimestamp(t_us / 1_000_000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z", t_us
