"""The run object of the API, its poll hint and its ETag: one builder for every route.

Everything here is pure: the meta hash comes in (read with one HMGET, see ``RunMeta``), and
so does the clock, so the hint curve and the tag are tested without Redis or sleeps.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import orjson

from runlog.ids import format_event_id, parse_ts_us
from runlog.phases import is_terminal

# The meta fields the run object needs, in the order of one HMGET.
META_FIELDS = (
    "tenant",
    "phase",
    "created_at",
    "updated_at",
    "halt_class",
    "epoch",
    "n",
    "terminal",
    "cancel_requested",
    "steps",
    "rows",
)

# The poll hint curve (see ``poll_hint_ms``).
HINT_MIN_MS = 1_000
HINT_MAX_MS = 30_000
HINT_QUIET_DIVISOR = 4


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _count(value: str | None) -> int:
    return int(value) if value else 0


@dataclass(frozen=True, slots=True)
class RunMeta:
    """A run's meta hash as read by ``META_FIELDS``."""

    run_id: str
    tenant: str
    phase: str
    created_at: str | None
    updated_at: str | None
    halt_class: str | None
    epoch: str
    n: int
    terminal_n: int | None
    cancel_requested: bool
    steps: int
    rows: int

    @classmethod
    def from_values(cls, run_id: str, values: list[Any]) -> RunMeta | None:
        """Build from the HMGET reply; None when the run does not exist."""
        meta = dict(zip(META_FIELDS, (_text(v) for v in values), strict=True))
        tenant, epoch = meta["tenant"], meta["epoch"]
        if tenant is None or epoch is None:
            return None
        return cls(
            run_id=run_id,
            tenant=tenant,
            phase=meta["phase"] or "queued",
            created_at=meta["created_at"],
            updated_at=meta["updated_at"],
            halt_class=meta["halt_class"] or None,
            epoch=epoch,
            n=_count(meta["n"]),
            terminal_n=int(meta["terminal"]) if meta["terminal"] else None,
            cancel_requested=meta["cancel_requested"] == "1",
            steps=_count(meta["steps"]),
            rows=_count(meta["rows"]),
        )

    @property
    def terminal(self) -> bool:
        """True once the run is in a final phase."""
        return is_terminal(self.phase)

    @property
    def last_event_id(self) -> str | None:
        """The id a stream gives the log's last event, or None for an empty log."""
        return format_event_id(self.epoch, self.n) if self.n > 0 else None


def poll_hint_ms(updated_at: str | None, now_us: int) -> int:
    """How long a poller should wait before asking again, in milliseconds.

    A run that just changed is likely to change again soon; one that has been quiet for a
    while is likely to stay quiet. So the hint is a quarter of the quiet time (the time
    since ``updated_at``), never less than 1 s nor more than 30 s: quiet 0-4 s -> 1 s,
    20 s -> 5 s, 60 s -> 15 s, 120 s and more -> 30 s. An unreadable ``updated_at`` or one in
    the future (clock skew between hosts) counts as "just changed".
    """
    if updated_at is None:
        return HINT_MIN_MS
    try:
        quiet_us = now_us - parse_ts_us(updated_at)
    except ValueError:
        return HINT_MIN_MS
    hint = quiet_us // 1000 // HINT_QUIET_DIVISOR
    return int(min(HINT_MAX_MS, max(HINT_MIN_MS, hint)))


def retry_after_s(hint_ms: int) -> int:
    """The hint as a ``Retry-After`` value: whole seconds, rounded up, at least 1."""
    return max(1, math.ceil(hint_ms / 1000))


def run_object(meta: RunMeta, now_us: int) -> dict[str, Any]:
    """The run object: lifecycle fields, log position, counters, and the poll hint.

    ``poll_after_ms`` is null once the run is terminal (there is nothing left to wait for).
    """
    return {
        "run_id": meta.run_id,
        "phase": meta.phase,
        "created_at": meta.created_at,
        "updated_at": meta.updated_at,
        "halt_class": meta.halt_class,
        "events": meta.n,
        "last_event_id": meta.last_event_id,
        "cancel_requested": meta.cancel_requested,
        "steps": meta.steps,
        "rows": meta.rows,
        "poll_after_ms": poll_hint(meta, now_us),
    }


def etag(meta: RunMeta) -> str:
    """A strong tag over everything in the run object but the hint.

    Every field of the object comes from the meta hash, so hashing those fields changes the
    tag exactly when the object (hint aside) changes. ``epoch`` is in too: a run deleted and
    re-created under the same id gets another tag even if its counters match.
    """
    parts = (
        meta.run_id,
        meta.phase,
        meta.created_at,
        meta.updated_at,
        meta.halt_class,
        meta.epoch,
        meta.n,
        meta.cancel_requested,
        meta.steps,
        meta.rows,
    )
    digest = hashlib.blake2b(orjson.dumps(parts), digest_size=12).hexdigest()
    return f'"{digest}"'


def etag_matches(if_none_match: str | None, tag: str) -> bool:
    """True when an ``If-None-Match`` header names ``tag`` (weak forms compare equal, RFC 9110)."""
    if not if_none_match:
        return False
    for candidate in if_none_match.split(","):
        value = candidate.strip()
        if value == "*":
            return True
        if value.startswith("W/"):
            value = value[2:]
        if value == tag:
            return True
    return False


def poll_hint(meta: RunMeta, now_us: int) -> int | None:
    """The run's poll hint in milliseconds; None once it is terminal."""
    return None if meta.terminal else poll_hint_ms(meta.updated_at, now_us)


def hint_headers(hint_ms: int | None) -> dict[str, str]:
    """``Retry-After`` for a hint; nothing for a terminal run (no hint)."""
    return {} if hint_ms is None else {"Retry-After": str(retry_after_s(hint_ms))}
