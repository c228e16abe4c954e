"""GET (catch-up and long-poll) and HEAD of a durable stream.

A long-poll subscribes to the stream's channel before its one read, so a change is either
in that read or announced after it; the announced data is answered as is.
"""

from __future__ import annotations

import time

from aiohttp import web

from runlog.durable_announce import DELETED

from ..appkeys import DURABLE_STORE, LIVE_STREAMS, SETTINGS
from . import protocol as p
from .access import target_of
from .errors import BadRequest, StreamNotFound
from .live import Reader
from .sse import stream_sse
from .store import Chunk, Entry, StreamInfo, present

# Entries and bytes one read answers at most; the rest is the next request's.
READ_COUNT = 1000
READ_BYTES = 4 * 1024 * 1024
CACHEABLE = "private, max-age=60, stale-while-revalidate=300"


def body_of(datas: list[bytes], content_type: str) -> bytes:
    """The response body: JSON messages as one array, other bytes as they are."""
    if p.is_json(content_type):
        return b"[" + b",".join(datas) + b"]"
    return b"".join(datas)


def within_budget(entries: list[Entry]) -> list[Entry]:
    """The leading entries that fit ``READ_BYTES`` (always at least one)."""
    total = 0
    for i, entry in enumerate(entries):
        total += len(entry.data)
        if total > READ_BYTES and i > 0:
            return entries[:i]
    return entries


def live_mode(request: web.Request) -> str:
    live = request.query.getall("live", [])
    if not live:
        return ""
    if len(live) > 1 or live[0] not in ("long-poll", "sse"):
        raise BadRequest("live must be long-poll or sse")
    return live[0]


async def read_stream(request: web.Request) -> web.StreamResponse:
    """``GET``: catch-up from ``offset`` (default ``-1``), or live with ``live=``."""
    target = target_of(request)
    offset = p.parse_offset(request.query.getall("offset", []))
    live = live_mode(request)
    if live and offset is None:
        raise BadRequest(f"live={live} needs an offset")
    offset = offset or p.Offset(p.START, 0)
    if live == "sse":
        return await stream_sse(request, target.tag, offset)
    if live == "long-poll":
        return await long_poll(request, target.tag, offset)
    chunk = await _read(request, target.tag, offset, touch=True)
    return catch_up(request, chunk, offset)


async def _read(request: web.Request, tag: str, offset: p.Offset, *, touch: bool) -> Chunk:
    store = request.app[DURABLE_STORE]
    count = 0 if offset.now else READ_COUNT
    return present(await store.read(tag, offset.after, count, touch=touch))


def _headers(info: StreamInfo, next_offset: str, up_to_date: bool) -> dict[str, str]:
    headers = {"Content-Type": info.content_type, p.NEXT_OFFSET: next_offset}
    if up_to_date:
        headers[p.UP_TO_DATE] = "true"
        if info.closed:
            headers[p.CLOSED] = "true"
    return headers


def catch_up(
    request: web.Request, chunk: Chunk, offset: p.Offset, cursor: str | None = None
) -> web.Response:
    """A 200 with the entries after ``offset`` (or 304 when the client has them)."""
    info = chunk.info
    if offset.now:
        headers = _headers(info, info.tail, True)
        headers["Cache-Control"] = "no-store"
        if cursor is not None:
            headers[p.CURSOR] = cursor
        return web.Response(body=body_of([], info.content_type), headers=headers)
    entries = within_budget(chunk.entries)
    if entries:
        next_offset = entries[-1].offset
        up_to_date = entries[-1].n >= info.n
    else:
        next_offset = info.tail if offset.after >= info.n else offset.raw
        up_to_date = True
        if offset.raw == p.START:
            next_offset = info.tail
    headers = _headers(info, next_offset, up_to_date)
    if cursor is not None:
        headers[p.CURSOR] = cursor
    etag = f'"{info.incarnation}:{offset.raw}:{next_offset}{":c" if p.CLOSED in headers else ""}"'
    headers["ETag"] = etag
    headers["Cache-Control"] = CACHEABLE
    if etag in _if_none_match(request):
        return web.Response(status=304, headers=headers)
    return web.Response(body=body_of([e.data for e in entries], info.content_type), headers=headers)


def _if_none_match(request: web.Request) -> set[str]:
    raw = request.headers.get("If-None-Match", "")
    return {part.strip() for part in raw.split(",") if part.strip()}


async def long_poll(request: web.Request, tag: str, offset: p.Offset) -> web.StreamResponse:
    """Answer at once if there is data (or the stream is closed), else wait for some."""
    cursor = p.next_cursor(request.query.get("cursor"))
    live = request.app[LIVE_STREAMS]
    reader = await live.follow(tag)
    try:
        chunk = await _read(request, tag, offset, touch=True)
        info = chunk.info
        if chunk.entries and not offset.now:
            return catch_up(request, chunk, offset, cursor)
        at = info.n if offset.now else offset.after
        if info.closed and at >= info.n:
            return _no_content(info.tail, cursor, closed=True)
        timeout = request.app[SETTINGS].streams_long_poll_s
        return await _wait(request, reader, tag, info, at, cursor, timeout)
    finally:
        live.leave(reader)


def _no_content(tail: str, cursor: str, *, closed: bool) -> web.Response:
    headers = {p.NEXT_OFFSET: tail, p.UP_TO_DATE: "true"}
    if closed:
        headers[p.CLOSED] = "true"
    else:
        headers[p.CURSOR] = cursor
    return web.Response(status=204, headers=headers)


async def _wait(
    request: web.Request,
    reader: Reader,
    tag: str,
    info: StreamInfo,
    at: int,
    cursor: str,
    wait_s: float,
) -> web.Response:
    deadline = time.monotonic() + wait_s
    tail = info.tail if at >= info.n else p.format_offset(at, 0)
    missed = False
    while not missed:
        left = deadline - time.monotonic()
        if left <= 0 or not await reader.wait(left):
            return _no_content(tail, cursor, closed=False)
        if reader.lost:
            break  # the live connection dropped: the store says what happened
        for change in reader.take():
            if change.kind == DELETED:
                raise StreamNotFound("the stream was deleted")
            if change.n < at or (change.n == at and not change.closed):
                continue
            if change.prev_n != at:
                missed = True  # a change came between our read and this one
                break
            next_offset = p.format_offset(change.n, change.size)
            if change.n == at:
                return _no_content(next_offset, cursor, closed=True)
            headers = _headers(info, next_offset, True)
            if change.closed:
                headers[p.CLOSED] = "true"
            headers[p.CURSOR] = cursor
            headers["Cache-Control"] = CACHEABLE
            return web.Response(body=body_of([change.data], info.content_type), headers=headers)
    offset = p.Offset(p.format_offset(at, 0), at)
    chunk = await _read(request, tag, offset, touch=False)
    if chunk.entries:
        return catch_up(request, chunk, offset, cursor)
    return _no_content(chunk.info.tail, cursor, closed=chunk.info.closed)


async def head_stream(request: web.Request) -> web.Response:
    """``HEAD``: content type, tail, TTL or expiry, closure; never cached."""
    target = target_of(request)
    chunk = present(await request.app[DURABLE_STORE].read(target.tag, 0, 0, touch=False))
    info = chunk.info
    headers = {
        "Content-Type": info.content_type,
        p.NEXT_OFFSET: info.tail,
        "Cache-Control": "no-store",
    }
    if info.ttl:
        headers[p.TTL] = info.ttl
    if info.expires_at:
        headers[p.EXPIRES_AT] = info.expires_at
    if info.closed:
        headers[p.CLOSED] = "true"
    return web.Response(status=200, headers=headers)
