"""What one HTTP stream means: status -> error, SSE block -> event, ending -> outcome.

No I/O here; the sync and async clients both drive these.
"""

from __future__ import annotations

import enum
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypedDict

import httpx
from httpx_sse import ServerSentEvent

from .errors import (
    BadRequest,
    Conflict,
    IdempotencyKeyReused,
    InvalidCursor,
    MantisConnectionError,
    MantisError,
    PayloadTooLarge,
    RunExists,
    RunFinished,
    RunNotFound,
    ServiceUnavailable,
    Unauthorized,
    UnexpectedResponse,
)


class Event(TypedDict):
    """One event of a run: `data` is the decoded JSON object, else the raw text."""

    event: str
    id: str
    data: dict[str, Any] | str


class Outcome(enum.Enum):
    """How a stream ended, which decides whether `follow` reconnects."""

    TERMINAL = "terminal"  # the run is over: the terminal event was delivered
    NO_CONTENT = "no_content"  # 204: the cursor is at or after the terminal event
    CLOSED = "closed"  # the server ended the response (its soft limit)
    IDLE = "idle"  # nothing, pings included, for idle_timeout_s
    DROPPED = "dropped"  # the connection broke mid-stream


@dataclass
class Connection:
    """What one stream delivered; filled in while it runs, read by `follow` afterwards."""

    outcome: Outcome | None = None
    established: bool = False
    events: int = 0
    retry_ms: int | None = None
    # httpx_sse keeps the last id across blocks, as the SSE spec says a browser must;
    # ids are unique per run, so a repeat means the block had no id line (a gap event).
    _last_block_id: str = ""

    def decode(self, sse: ServerSentEvent) -> Event | None:
        """Turn an SSE block into an event; None for blocks that carry none (`retry:`)."""
        if sse.retry is not None:
            self.retry_ms = sse.retry
        own_id = "" if sse.id == self._last_block_id else sse.id
        self._last_block_id = sse.id
        if not sse.data:
            # A browser's EventSource does not dispatch a block without data either.
            return None
        self.events += 1
        if sse.event == "terminal":
            self.outcome = Outcome.TERMINAL
        return {"event": sse.event, "id": own_id, "data": decode_data(sse.data)}

    def broke(self, exc: httpx.RequestError, endpoint: str) -> None:
        """Record a transport failure; raise it if the stream never got going."""
        if isinstance(exc, httpx.ReadTimeout):
            self.outcome = Outcome.IDLE
        elif self.established:
            self.outcome = Outcome.DROPPED
        else:
            raise MantisConnectionError(
                f"cannot connect to {endpoint}: {type(exc).__name__}: {exc}"
            ) from exc


def decode_data(text: str) -> dict[str, Any] | str:
    """JSON objects become dicts; anything else stays the text the server sent."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, dict) else text


def check_stream_response(response: httpx.Response, conn: Connection, what: str) -> bool:
    """True if the response is an event stream to read, False on 204; else raise.

    The body of an error response must have been read already.
    """
    status = response.status_code
    if status == 204:
        conn.outcome = Outcome.NO_CONTENT
        return False
    if status != 200:
        raise error_for(response, what)
    content_type = response.headers.get("content-type", "").partition(";")[0].strip()
    if content_type != "text/event-stream":
        raise UnexpectedResponse(
            f"{what}: expected an event stream, got HTTP 200 {content_type or 'without type'}",
            status=status,
        )
    conn.established = True
    return True


def error_for(response: httpx.Response, what: str) -> MantisError:
    """The SDK error for a non-2xx response, carrying the server's code and message."""
    status = response.status_code
    code, message = _error_body(response)
    text = f"{what}: HTTP {status} {code or response.reason_phrase}: {message}"
    if status == 401:
        return Unauthorized(text, code=code, status=status)
    if status == 404:
        return RunNotFound(text, code=code, status=status)
    if status == 400:
        kind = InvalidCursor if code == "invalid_cursor" else BadRequest
        return kind(text, code=code, status=status)
    if status == 409:
        conflict = {"run_exists": RunExists, "run_finished": RunFinished}.get(code or "", Conflict)
        return conflict(text, code=code, status=status)
    if status == 413:
        return PayloadTooLarge(text, code=code, status=status)
    if status == 422 and code == "idempotency_key_reused":
        return IdempotencyKeyReused(text, code=code, status=status)
    if status == 429 or status >= 500:
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        return ServiceUnavailable(text, code=code, status=status, retry_after=retry_after)
    return UnexpectedResponse(text, code=code, status=status)


def _error_body(response: httpx.Response) -> tuple[str | None, str]:
    try:
        error = response.json()["error"]
        return str(error["code"]), str(error["message"])
    except (ValueError, LookupError, TypeError):
        # Not the service's JSON (a proxy's HTML page, say): the body is not repeated,
        # it can be long and says nothing the status does not.
        return None, response.reason_phrase or "error"


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delay-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)
