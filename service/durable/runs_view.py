"""Run logs read as Durable Streams: ``GET /v1/stream/runs/{run_id}`` (read-only).

The stream is in JSON mode: one message per event, ``{"event", "id", "data"}``. Offsets are
our event ids (``<epoch>-<n>``, which sort as the log does), ``-1`` and ``now`` included;
the position before the first event is ``<epoch>-0000000000``. The stream is closed at
the run's terminal event. Live reads (long-poll, SSE) ride on the pod's hub: the run's
feed is watched (one subscription per run per pod, shared with the SSE endpoint) and its
decoded events are tapped, so a delivered event costs no Redis command.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

from aiohttp import web
from redis.exceptions import RedisError

from runlog.ids import IdCursor, format_event_id, is_valid_run_id, parse_cursor

from ..appkeys import HUB, READER, SETTINGS
from ..errors import StoreUnavailable
from ..hub import Feed, Hub
from ..store import Entry, RunState
from . import protocol as p
from .access import tenant_of
from .errors import BadRequest, StreamGone, StreamNotFound
from .live import wait_signal
from .reads import CACHEABLE, live_mode
from .sse import DRAIN_TIMEOUT_S, control_event, data_event

READ_COUNT = 1000
JSON = p.JSON_TYPE
TERMINAL = b"terminal"


def message(state: RunState, name: bytes, n: int, data: bytes) -> bytes:
    """One event as a JSON message (its data embedded as the JSON it already is)."""
    return b'{"event":%s,"id":"%s","data":%s}' % (
        json.dumps(name.decode()).encode(),
        format_event_id(state.epoch, n).encode(),
        data,
    )


async def _state(request: web.Request) -> RunState:
    tenant = tenant_of(request)
    run_id = request.match_info["run_id"]
    if not is_valid_run_id(run_id):
        raise StreamNotFound("no such run")
    state = await request.app[READER].state(run_id)
    if state is None or state.tenant != tenant:
        raise StreamNotFound("no such run")
    return state


def _after(request: web.Request, state: RunState) -> tuple[str, int] | None:
    """``(raw offset, last event number the client has)``; None when absent."""
    values = request.query.getall("offset", [])
    if not values:
        return None
    if len(values) > 1:
        raise BadRequest("offset must be given once")
    raw = values[0]
    if raw == p.START:
        return raw, 0
    if raw == p.NOW:
        return raw, state.last_n
    try:
        cursor = parse_cursor(raw) if raw.strip() == raw else None
    except ValueError:
        cursor = None
    if not isinstance(cursor, IdCursor):
        raise BadRequest("offset must be -1, now, or an event id of this run")
    if cursor.epoch != state.epoch:
        raise StreamGone("that offset belongs to an earlier incarnation of this run's log")
    return raw, cursor.n


def _offset(state: RunState, n: int) -> str:
    return format_event_id(state.epoch, n)


def _closed_at(state: RunState, n: int) -> bool:
    return state.terminal_n is not None and n >= state.terminal_n


async def head_run_stream(request: web.Request) -> web.Response:
    state = await _state(request)
    headers = {
        "Content-Type": JSON,
        p.NEXT_OFFSET: _offset(state, state.last_n),
        "Cache-Control": "no-store",
    }
    if state.terminal_n is not None:
        headers[p.CLOSED] = "true"
    return web.Response(status=200, headers=headers)


async def read_run_stream(request: web.Request) -> web.StreamResponse:
    state = await _state(request)
    live = live_mode(request)
    asked = _after(request, state)
    if live and asked is None:
        raise BadRequest(f"live={live} needs an offset")
    raw, after = asked or (p.START, 0)
    if after > state.last_n:
        raise BadRequest("offset is past the end of this run's log")
    if raw == p.START:
        after = max(0, state.first_n - 1)  # the beginning of what the log still holds
    elif after + 1 < state.first_n and after < state.last_n:
        raise StreamGone("events before this offset are no longer retained")
    if not live:
        return await _catch_up(request, state, raw, after)
    hub = request.app[HUB]
    feed: Feed | None = None
    if state.terminal_n is None:
        try:
            feed = await hub.watch(state.run_id, state.id_prefix)
        except (TimeoutError, RedisError) as exc:
            raise StoreUnavailable("live events cannot be reached; retry later") from exc
    try:
        if live == "sse":
            return await _sse(request, hub, feed, state, raw, after)
        return await _long_poll(request, feed, state, after)
    finally:
        if feed is not None:
            hub.unwatch(feed)


async def _entries(request: web.Request, state: RunState, after: int) -> list[Entry]:
    return await request.app[READER].after(state.run_id, after, READ_COUNT)


def _body(state: RunState, events: list[tuple[int, bytes, bytes]]) -> bytes:
    return b"[" + b",".join(message(state, name, n, data) for n, name, data in events) + b"]"


def _as_events(entries: list[Entry]) -> list[tuple[int, bytes, bytes]]:
    return [(e.n, e.name, e.data) for e in entries]


def _headers(state: RunState, last: int, up_to_date: bool) -> dict[str, str]:
    headers = {"Content-Type": JSON, p.NEXT_OFFSET: _offset(state, last)}
    if up_to_date:
        headers[p.UP_TO_DATE] = "true"
    if _closed_at(state, last):
        headers[p.CLOSED] = "true"
    return headers


async def _catch_up(request: web.Request, state: RunState, raw: str, after: int) -> web.Response:
    if raw == p.NOW:
        headers = _headers(state, after, True)
        headers["Cache-Control"] = "no-store"
        return web.Response(body=b"[]", headers=headers)
    entries = await _entries(request, state, after)
    last = entries[-1].n if entries else after
    headers = _headers(state, last, last >= state.last_n)
    etag = f'"{state.epoch}:{raw}:{headers[p.NEXT_OFFSET]}{":c" if p.CLOSED in headers else ""}"'
    headers["ETag"] = etag
    headers["Cache-Control"] = CACHEABLE
    if etag in {v.strip() for v in request.headers.get("If-None-Match", "").split(",")}:
        return web.Response(status=304, headers=headers)
    return web.Response(body=_body(state, _as_events(entries)), headers=headers)


class _Tap:
    """Events tapped from a run's feed, for one request."""

    def __init__(self, feed: Feed | None) -> None:
        self.feed = feed
        self.events: list[tuple[int, bytes, bytes]] = []
        self.lost = False
        self.signal = asyncio.Event()
        if feed is not None:
            feed.taps.append(self)

    def __call__(self, events: list[tuple[int, bytes, bytes]] | None) -> None:
        if events is None:
            self.lost = True
        else:
            self.events += events
        self.signal.set()

    def take(self, after: int) -> tuple[list[tuple[int, bytes, bytes]], bool]:
        """The tapped events right after ``after``, in order; and whether one went missing."""
        got, self.events = self.events, []
        self.signal.clear()
        ready: list[tuple[int, bytes, bytes]] = []
        for event in got:
            if event[0] <= after:
                continue
            if event[0] != after + 1:
                return ready, True
            ready.append(event)
            after = event[0]
        return ready, False

    async def wait(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for an event (or the connection's loss)."""
        return await wait_signal(self.signal, bool(self.events or self.lost), seconds)

    def close(self) -> None:
        if self.feed is not None:
            with contextlib.suppress(ValueError):
                self.feed.taps.remove(self)


async def _long_poll(
    request: web.Request, feed: Feed | None, state: RunState, after: int
) -> web.Response:
    cursor = p.next_cursor(request.query.get("cursor"))
    tap = _Tap(feed)
    try:
        entries = await _entries(request, state, after)
        events = _as_events(entries)
        if not events and not _closed_at(state, after):
            deadline = time.monotonic() + request.app[SETTINGS].streams_long_poll_s
            while not events:
                left = deadline - time.monotonic()
                if left <= 0 or not await tap.wait(left):
                    break
                events, missed = tap.take(after)
                if missed or tap.lost:
                    events = _as_events(await _entries(request, state, after))
                    break
    finally:
        tap.close()
    if not events:
        headers = {p.NEXT_OFFSET: _offset(state, after), p.UP_TO_DATE: "true"}
        if _closed_at(state, after):
            headers[p.CLOSED] = "true"
        else:
            headers[p.CURSOR] = cursor
        return web.Response(status=204, headers=headers)
    last = events[-1][0]
    closed = events[-1][1] == TERMINAL or _closed_at(state, last)
    headers = {"Content-Type": JSON, p.NEXT_OFFSET: _offset(state, last), p.UP_TO_DATE: "true"}
    if closed:
        headers[p.CLOSED] = "true"
    else:
        headers[p.CURSOR] = cursor
    headers["Cache-Control"] = CACHEABLE
    return web.Response(body=_body(state, events), headers=headers)


async def _sse(
    request: web.Request, hub: Hub, feed: Feed | None, state: RunState, raw: str, after: int
) -> web.StreamResponse:
    del hub, raw
    cursor = p.next_cursor(request.query.get("cursor"))
    tap = _Tap(feed)
    response = web.StreamResponse(
        status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    deadline = time.monotonic() + request.app[SETTINGS].streams_sse_max_s

    async def send(events: list[tuple[int, bytes, bytes]], up_to_date: bool) -> bool:
        """One data/control pair; True when the stream is now closed."""
        nonlocal after
        frames = b""
        if events:
            after = events[-1][0]
            payload = b",".join(message(state, name, n, data) for n, name, data in events)
            frames = data_event(payload, JSON)
        closed = (bool(events) and events[-1][1] == TERMINAL) or _closed_at(state, after)
        frames += control_event(
            _offset(state, after), cursor, up_to_date=up_to_date or closed, closed=closed
        )
        await asyncio.wait_for(response.write(frames), DRAIN_TIMEOUT_S)
        return closed

    try:
        await response.prepare(request)
        with contextlib.suppress(ConnectionError, TimeoutError):
            done = False
            while not done:
                # Catch up from the log, one data/control pair per read.
                while True:
                    entries = await _entries(request, state, after)
                    more = len(entries) == READ_COUNT
                    if await send(_as_events(entries), not more):
                        done = True
                    if done or not more:
                        break
                # Live, from the tapped feed; a missed event sends us back to the log.
                resync = False
                while not done:
                    left = deadline - time.monotonic()
                    if left <= 0 or not await tap.wait(left) or tap.lost:
                        done = True
                        break
                    events, missed = tap.take(after)
                    if events and await send(events, True):
                        done = True
                    elif missed:
                        resync = True
                        break
                if not resync:
                    break
    finally:
        tap.close()
    with contextlib.suppress(ConnectionError):
        await response.write_eof()
    return response
