"""The one-shot result of a run: the ``row`` of every ``extract`` event, page by page.

The log is read in bounded batches (``LogReader.after``), so a page costs memory for at
most one batch plus the rows it returns, whatever the size of the log.
"""

from __future__ import annotations

from typing import Any

import orjson

from runlog.ids import IdCursor, format_event_id, parse_cursor

from .errors import InvalidCursor
from .runobject import RunMeta, poll_hint_ms
from .store import LogReader

RESULT_LIMIT_MAX = 10_000
SCAN_BATCH = 1_000
EXTRACT = b"extract"


def cursor_position(raw: str, meta: RunMeta) -> int:
    """The event number a ``cursor`` names (0: from the start); only ids of this log."""
    try:
        cursor = parse_cursor(raw)
    except ValueError as exc:
        raise InvalidCursor(str(exc)) from None
    if cursor is None:
        return 0
    if not isinstance(cursor, IdCursor):
        raise InvalidCursor("cursor must be a next_cursor from an earlier result")
    if cursor.epoch != meta.epoch:
        raise InvalidCursor(
            "cursor was issued by an earlier incarnation of this run's log; start again "
            "without a cursor"
        )
    return cursor.n


def _row_of(data: bytes) -> Any:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return value.get("row") if isinstance(value, dict) else None


async def result_page(
    reader: LogReader, meta: RunMeta, after_n: int, limit: int, now_us: int
) -> dict[str, Any]:
    """Up to ``limit`` extract rows after event ``after_n``, as the ``result`` answer.

    ``next_cursor`` is where the next page starts: the last event read, or null once the
    run is terminal and every row has been returned. ``more`` says whether the log already
    holds events past this page (read on at once) or not (poll later, if not ``done``).
    """
    rows: list[Any] = []
    position = after_n
    end = meta.n  # what the log held when the meta was read: the page stops there
    while len(rows) < limit and position < end:
        batch = await reader.after(meta.run_id, position, min(SCAN_BATCH, end - position))
        if not batch:  # expired meanwhile: nothing more to read
            position = end
            break
        for entry in batch:
            if entry.n > end:  # the log was trimmed past ``end`` meanwhile: stop there
                position = end
                break
            position = entry.n
            if entry.name == EXTRACT:
                rows.append(_row_of(entry.data))
                if len(rows) >= limit:
                    break
    more = position < end
    done = meta.terminal
    finished = done and not more
    body: dict[str, Any] = {
        "run_id": meta.run_id,
        "phase": meta.phase,
        "halt_class": meta.halt_class,
        "done": done,
        "rows": rows,
        "next_cursor": None if finished else _cursor(meta, position),
        "more": more,
    }
    if not done:
        body["poll_after_ms"] = poll_hint_ms(meta.updated_at, now_us)
    return body


def _cursor(meta: RunMeta, position: int) -> str:
    # Position 0 (nothing read yet) has no event id: the empty cursor means "from the start".
    return format_event_id(meta.epoch, position) if position > 0 else ""
