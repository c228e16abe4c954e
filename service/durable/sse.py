"""``GET ?live=sse``: catch-up then live data as ``data`` / ``control`` event pairs.

Text and JSON streams carry their data as text, one ``data:`` line per line of it (so a
payload can never end an event or forge one); other streams carry base64. After every
``data`` event comes a ``control`` event with the next offset, the cursor (while the
stream is open), ``upToDate`` when caught up and ``streamClosed`` at the end of a closed
stream, after which the connection closes. Connections also close after
``MANTIS_STREAMS_SSE_MAX_S`` so that clients reconnect from their last offset.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import time

from aiohttp import web

from runlog.durable_announce import DELETED

from ..appkeys import DURABLE_STORE, LIVE_STREAMS, SETTINGS
from . import protocol as p
from .live import Reader
from .store import Chunk, present

READ_COUNT = 1000
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")
# A client that accepts no bytes for this long is cut; it reconnects from its offset.
DRAIN_TIMEOUT_S = 30.0


def data_event(payload: bytes, content_type: str) -> bytes:
    """One ``data`` event; JSON messages are sent as one array."""
    if p.is_json(content_type):
        text = b"[" + payload + b"]"
    elif p.is_text(content_type):
        text = payload
    else:
        text = base64.b64encode(payload)
    lines = []
    for line in _LINE_BREAK.split(text):
        # A line starting with a space keeps it: SSE readers drop one leading space.
        lines.append(b"data: " + line if line.startswith(b" ") else b"data:" + line)
    return b"event: data\n" + b"\n".join(lines) + b"\n\n"


def control_event(next_offset: str, cursor: str, *, up_to_date: bool, closed: bool) -> bytes:
    control: dict[str, object] = {"streamNextOffset": next_offset}
    if closed:
        control["streamClosed"] = True
        control["upToDate"] = True
    else:
        control["streamCursor"] = cursor
        if up_to_date:
            control["upToDate"] = True
    return b"event: control\ndata:" + json.dumps(control, separators=(",", ":")).encode() + b"\n\n"


async def stream_sse(request: web.Request, tag: str, offset: p.Offset) -> web.StreamResponse:
    live = request.app[LIVE_STREAMS]
    reader = await live.follow(tag)
    try:
        return await _serve(request, reader, tag, offset)
    finally:
        live.leave(reader)


async def _serve(
    request: web.Request, reader: Reader, tag: str, offset: p.Offset
) -> web.StreamResponse:
    store = request.app[DURABLE_STORE]
    settings = request.app[SETTINGS]
    cursor = p.next_cursor(request.query.get("cursor"))
    first = present(
        await store.read(tag, offset.after, 0 if offset.now else READ_COUNT, touch=True)
    )
    content_type = first.info.content_type
    headers = {
        "Content-Type": "text/event-stream",
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
    }
    if not p.is_text(content_type):
        headers[p.SSE_ENCODING] = "base64"
    response = web.StreamResponse(status=200, headers=headers)
    await response.prepare(request)

    async def send(data: bytes) -> None:
        await asyncio.wait_for(response.write(data), DRAIN_TIMEOUT_S)

    async def catch_up(chunk: Chunk, at: int) -> tuple[int, bool]:
        """Send stored entries (reading on until up to date), one data/control pair per
        read; returns the position reached and whether the stream ended there."""
        while True:
            info = chunk.info
            if not chunk.entries:
                closed = info.closed and at >= info.n
                tail = info.tail if at >= info.n else p.format_offset(at, 0)
                await send(control_event(tail, cursor, up_to_date=True, closed=closed))
                return at, closed
            entries = chunk.entries
            at = entries[-1].n
            up_to_date = at >= info.n
            closed = info.closed and up_to_date
            joiner = b"," if p.is_json(content_type) else b""
            await send(
                data_event(joiner.join(e.data for e in entries), content_type)
                + control_event(entries[-1].offset, cursor, up_to_date=up_to_date, closed=closed)
            )
            if closed or up_to_date:
                return at, closed
            chunk = await _reread(request, tag, at)

    deadline = time.monotonic() + settings.streams_sse_max_s
    with contextlib.suppress(ConnectionError, TimeoutError):
        at, closed = await catch_up(first, first.info.n if offset.now else offset.after)
        # Live: announced changes, answered without reading the store.
        while not closed:
            left = deadline - time.monotonic()
            if left <= 0 or not await reader.wait(left) or reader.lost:
                break
            for change in reader.take():
                if change.kind == DELETED:
                    closed = True
                    break
                if change.n < at or (change.n == at and not change.closed):
                    continue
                if change.prev_n != at:
                    # A change came between our read and this one: read what we missed.
                    at, closed = await catch_up(await _reread(request, tag, at), at)
                    break
                frames = data_event(change.data, content_type) if change.n > at else b""
                at = change.n
                next_offset = p.format_offset(change.n, change.size)
                await send(
                    frames
                    + control_event(next_offset, cursor, up_to_date=True, closed=change.closed)
                )
                if change.closed:
                    closed = True
                    break
    return await _end(response)


async def _reread(request: web.Request, tag: str, at: int) -> Chunk:
    chunk = await request.app[DURABLE_STORE].read(tag, at, READ_COUNT, touch=False)
    if chunk is None or chunk.info.deleted:
        raise ConnectionError("the stream was deleted")
    return chunk


async def _end(response: web.StreamResponse) -> web.StreamResponse:
    with contextlib.suppress(ConnectionError):
        await response.write_eof()
    return response
