"""Request parsing for Durable Streams: offsets, cursors, TTL and expiry, producers, bodies.

Every function raises ``BadRequest`` with a message naming what was wrong.
"""

from __future__ import annotations

import json
import math
import random
import re
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .errors import BadRequest

# Header names (HTTP headers are case-insensitive; aiohttp's lookups are too).
NEXT_OFFSET = "Stream-Next-Offset"
UP_TO_DATE = "Stream-Up-To-Date"
CURSOR = "Stream-Cursor"
CLOSED = "Stream-Closed"
TTL = "Stream-TTL"
EXPIRES_AT = "Stream-Expires-At"
SEQ = "Stream-Seq"
SSE_ENCODING = "Stream-SSE-Data-Encoding"
PRODUCER_ID = "Producer-Id"
PRODUCER_EPOCH = "Producer-Epoch"
PRODUCER_SEQ = "Producer-Seq"
PRODUCER_EXPECTED_SEQ = "Producer-Expected-Seq"
PRODUCER_RECEIVED_SEQ = "Producer-Received-Seq"

DEFAULT_CONTENT_TYPE = "application/octet-stream"
JSON_TYPE = "application/json"

START = "-1"
NOW = "now"
# Our offsets: entry count and byte count after that position, both zero-padded, so that
# string order is stream order. ``-1`` and ``now`` can never be minted.
_OFFSET = re.compile(r"(\d{16})_(\d{16})")
_DECIMAL = re.compile(r"0|[1-9][0-9]*")
MAX_SAFE_INTEGER = 2**53 - 1


def format_offset(n: int, size: int) -> str:
    """The offset of the position after entry ``n`` (``size`` bytes so far)."""
    return f"{n:016d}_{size:016d}"


@dataclass(frozen=True, slots=True)
class Offset:
    """A requested read position: after entry ``after`` (``now``: after the tail)."""

    raw: str
    after: int
    now: bool = False


def parse_offset(values: list[str]) -> Offset | None:
    """The ``offset`` query parameter (None when absent)."""
    if not values:
        return None
    if len(values) > 1:
        raise BadRequest("offset must be given once")
    raw = values[0]
    if raw == START:
        return Offset(raw, 0)
    if raw == NOW:
        return Offset(raw, 0, now=True)
    match = _OFFSET.fullmatch(raw)
    if match is None:
        raise BadRequest("offset must be -1, now, or an offset this server returned")
    return Offset(raw, int(match.group(1)))


# Cursors count 20-second intervals since 2024-10-09T00:00:00Z (the protocol's defaults).
_CURSOR_EPOCH_S = 1728432000
_CURSOR_INTERVAL_S = 20


def next_cursor(client_cursor: str | None) -> str:
    """The cursor of a live response: the current interval, always past the client's."""
    current = int((time.time() - _CURSOR_EPOCH_S) // _CURSOR_INTERVAL_S)
    if client_cursor and client_cursor.isdigit() and len(client_cursor) < 20:
        echoed = int(client_cursor)
        if echoed >= current:
            # 1 to 3600 s of jitter, in whole intervals: never the same cursor twice.
            jitter = math.ceil(random.randint(1, 3600) / _CURSOR_INTERVAL_S)
            return str(echoed + jitter)
    return str(current)


def parse_content_type(raw: str | None) -> str:
    """The media type, lower-cased, without parameters (what streams compare)."""
    if raw is None or not raw.strip():
        return DEFAULT_CONTENT_TYPE
    media = raw.split(";", 1)[0].strip().lower()
    if "/" not in media or len(media) > 255:
        raise BadRequest("Content-Type must be a media type such as text/plain")
    return media


def is_json(content_type: str) -> bool:
    return content_type == JSON_TYPE


def is_text(content_type: str) -> bool:
    """Whether SSE carries the data as text (else base64)."""
    return content_type.startswith("text/") or content_type == JSON_TYPE


def is_true(raw: str | None) -> bool:
    """``Stream-Closed`` counts only when exactly ``true`` (any case)."""
    return raw is not None and raw.strip().lower() == "true"


def parse_ttl(raw: str | None) -> int | None:
    if raw is None:
        return None
    if _DECIMAL.fullmatch(raw) is None or len(raw) > 12:
        raise BadRequest("Stream-TTL must be a whole number of seconds, e.g. 3600")
    return int(raw)


def parse_expires_at(raw: str | None) -> tuple[str, int] | None:
    """The RFC 3339 text as given and its time in epoch milliseconds."""
    if raw is None:
        return None
    try:
        when = datetime.fromisoformat(raw.strip())
    except ValueError:
        when = None
    if when is None or when.tzinfo is None or "T" not in raw.upper():
        raise BadRequest("Stream-Expires-At must be an RFC 3339 time with a time zone")
    return raw.strip(), int(when.timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class Producer:
    """Idempotent producer headers: id, epoch, seq (as sent, digits only)."""

    id: str
    epoch: str
    seq: str


def _producer_number(name: str, raw: str) -> str:
    if _DECIMAL.fullmatch(raw) is None or int(raw) > MAX_SAFE_INTEGER:
        raise BadRequest(f"{name} must be a non-negative integer up to 2^53-1")
    return raw


def parse_producer(pid: str | None, epoch: str | None, seq: str | None) -> Producer | None:
    given = [v is not None for v in (pid, epoch, seq)]
    if not any(given):
        return None
    if not all(given) or pid is None or epoch is None or seq is None:
        raise BadRequest("Producer-Id, Producer-Epoch and Producer-Seq go together")
    if not pid or len(pid) > 256:
        raise BadRequest("Producer-Id must be a non-empty string of at most 256 characters")
    return Producer(
        pid, _producer_number(PRODUCER_EPOCH, epoch), _producer_number(PRODUCER_SEQ, seq)
    )


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def json_messages(body: bytes, *, allow_empty: bool) -> list[bytes]:
    """A JSON body as messages: a top-level array is flattened by one level."""
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("the body is not valid JSON") from None
    items = value if isinstance(value, list) else [value]
    if not items and not allow_empty:
        raise BadRequest("an empty JSON array appends nothing; send at least one message")
    return [json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode() for item in items]
