"""The SSE wire format: one encoder for every frame, and the streaming response.

Frames are built once per pod and written as ready HTTP/1.1 chunks, so delivering an
event to a client is one ``transport.write`` of shared bytes.
"""

from __future__ import annotations

import contextlib
import random
import re
from typing import Any

import orjson
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp_sse import EventSourceResponse

_NAME_RE = re.compile(rb"[A-Za-z0-9_.-]{1,64}")

RETRY_MS = 2000
PING = b": ping\n\n"
RETRY = b"retry: %d\n\n" % RETRY_MS


def safe_name(name: bytes) -> bytes:
    """An event name that cannot break the framing: a short token, else ``message``."""
    return name if _NAME_RE.fullmatch(name) else b"message"


def safe_data(data: bytes) -> bytes:
    """One line of JSON: data with a raw line break (not written by our bridge) is re-encoded."""
    if b"\n" in data or b"\r" in data:
        try:
            return orjson.dumps(orjson.loads(data))
        except orjson.JSONDecodeError:
            return orjson.dumps(data.decode("utf-8", "replace"))
    return data


def encode_event(name: bytes, event_id: bytes | None, data: bytes) -> bytes:
    """One SSE event; ``event_id`` None omits the ``id:`` line (only for ``gap``)."""
    head = b"event: " + safe_name(name)
    if event_id is not None:
        head += b"\nid: " + event_id
    return head + b"\ndata: " + safe_data(data) + b"\n\n"


def gap_frame(data: dict[str, str | None]) -> bytes:
    """The ``gap`` event (no ``id:``: it is not part of the log)."""
    return encode_event(b"gap", None, orjson.dumps(data))


def chunk(payload: bytes) -> bytes:
    """``payload`` framed as one HTTP/1.1 chunk (the response is chunked)."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


PING_CHUNK = chunk(PING)
UNAVAILABLE = b": unavailable\n\n"
# An EventSource told to come back later waits this long, give or take half, so that the
# clients of a pod that went away do not all come back in the same instant.
RETRY_LATER_MS = 2000


def retry_later_ms() -> int:
    """A jittered reconnect delay for a stream turned away: 1 to 3 s."""
    return int(RETRY_LATER_MS * (0.5 + random.random()))


class EventStreamResponse(EventSourceResponse):
    """aiohttp-sse's response (headers, TCP user timeout) without its per-connection ping task.

    Pings come from the hub's single pod-wide ticker instead, so an idle connection costs
    no task and no timer; the contract's content type carries the charset.
    """

    def __init__(self, *, headers: dict[str, str] | None = None, send_timeout: float = 120) -> None:
        super().__init__(headers=headers, send_timeout=send_timeout)
        self.headers["Content-Type"] = "text/event-stream; charset=utf-8"

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self.prepared:
            return self._payload_writer
        self._set_tcp_user_timeout(request)
        writer = await web.StreamResponse.prepare(self, request)
        return writer


def event_json(name: str, event_id: str | None, data: bytes) -> dict[str, Any]:
    """An event as the JSON page lists it: the same data object the stream carries."""
    try:
        decoded: Any = orjson.loads(data)
    except orjson.JSONDecodeError:
        decoded = data.decode("utf-8", "replace")
    return {"event": name, "id": event_id, "data": decoded}


def wants_stream(request: web.BaseRequest) -> bool:
    """``sse=true`` or ``Accept: text/event-stream`` asks for a stream (else a JSON page)."""
    if request.query.get("sse", "").lower() in ("1", "true", "yes"):
        return True
    return "text/event-stream" in request.headers.get("Accept", "")


async def retry_later(request: web.BaseRequest) -> web.StreamResponse:
    """A stream that cannot be served now: ``200`` with a jittered ``retry:``, then the end.

    A browser's EventSource reconnects after ``retry`` ms; any 5xx would make it give up
    for good.
    """
    response = EventStreamResponse()
    response.headers["Retry-After"] = "2"
    await response.prepare(request)
    with contextlib.suppress(ConnectionError):
        await response.write(b"retry: %d\n\n%s" % (retry_later_ms(), UNAVAILABLE))
        await response.write_eof()
    return response
