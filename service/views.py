"""HTTP handlers: ``GET /v1/runs/{run_id}/events`` as an SSE stream or a JSON page."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiohttp import HttpVersion11, web
from redis.exceptions import RedisError

from runlog.ids import Cursor, TimeCursor, format_event_id, is_valid_run_id, parse_cursor

from .appkeys import ADMISSION, HUB, READER, SETTINGS, TICKETS, TOKENS
from .errors import (
    InvalidCursor,
    InvalidLimit,
    InvalidRunId,
    RunNotFound,
    TooManyStreams,
    Unauthorized,
)
from .hub import STORE_LOST, Feed, Subscriber
from .resume import ResumePlan, plan_resume
from .sse import RETRY, EventStreamResponse, event_json, gap_frame, retry_later, wants_stream
from .store import Entry, RunState
from .stream import BatchSizer, replay_then_live, trimmed_gap
from .tickets import ExpiredTicket, InvalidTicket

# What a request meets when the store is away (the middleware maps these to 503 for JSON).
STORE_DOWN = (RedisError, OSError, TimeoutError)

PAGE_DEFAULT = 1000
PAGE_MAX = 10_000


def tenant_of(request: web.Request, *, allow_ticket: bool = False) -> str:
    """The authenticated tenant, or 401 (absent and unknown tokens look the same).

    ``allow_ticket`` (read-only endpoints of one run only): without the header, a
    ``ticket`` query parameter issued for the run in the URL is accepted; a stream
    reconnecting with ``Last-Event-ID`` may use it until the ticket's max lifetime.
    """
    token = request.headers.get("X-Mantis-Token")
    ticket = request.query.get("ticket") if allow_ticket else None
    if token is None and ticket:
        resuming = bool(request.headers.get("Last-Event-ID", "").strip()) and wants_stream(request)
        run_id = request.match_info["run_id"]
        try:
            return request.app[TICKETS].verify(ticket, run_id, resuming=resuming)
        except ExpiredTicket:
            raise Unauthorized("the ticket has expired; request a new one") from None
        except InvalidTicket:
            raise Unauthorized("the ticket is not valid for this run") from None
    tenant = request.app[TOKENS].tenant_for(token)
    if tenant is None:
        raise Unauthorized("a valid X-Mantis-Token header is required")
    return tenant


def run_id_of(request: web.Request) -> str:
    run_id = request.match_info["run_id"]
    if not is_valid_run_id(run_id):
        raise InvalidRunId("run_id must match [A-Za-z0-9_-]{1,128}")
    return run_id


def cursor_of(request: web.Request) -> Cursor:
    """Last-Event-ID wins over ``since``; both take the same forms."""
    raw = request.headers.get("Last-Event-ID")
    if raw is None:
        raw = request.query.get("since", "")
    try:
        return parse_cursor(raw)
    except ValueError as exc:
        raise InvalidCursor(str(exc)) from None


async def load_run(request: web.Request, run_id: str, tenant: str) -> RunState:
    """The run's state, or 404 when absent or another tenant's (indistinguishable)."""
    state = await request.app[READER].state(run_id)
    if state is None or state.tenant != tenant:
        raise RunNotFound(f"no run {run_id!r} for this tenant")
    return state


async def resolve(request: web.Request, state: RunState, cursor: Cursor) -> ResumePlan:
    terminal_t = None
    if isinstance(cursor, TimeCursor) and state.terminal_n is not None:
        entry = await request.app[READER].entry(state.run_id, state.terminal_n)
        terminal_t = entry.t if entry is not None else None
    return plan_resume(state, cursor, terminal_t)


async def run_events(request: web.Request) -> web.StreamResponse:
    """The run's events after the cursor: a live SSE stream, or a JSON page."""
    tenant = tenant_of(request, allow_ticket=True)
    run_id = run_id_of(request)
    cursor = cursor_of(request)
    stream = wants_stream(request)
    limit = PAGE_DEFAULT if stream else page_limit(request)
    if not stream:
        state = await load_run(request, run_id, tenant)
        plan = await resolve(request, state, cursor)
        return web.json_response(await page(request, state, plan, limit))
    if request.app[ADMISSION].draining:
        # This pod is going away: the client's EventSource retries (on another pod).
        return await retry_later(request)
    try:
        state = await load_run(request, run_id, tenant)
        plan = await resolve(request, state, cursor)
    except STORE_DOWN:
        return await retry_later(request)
    return await stream_events(request, tenant, state, plan)


async def create_ticket(request: web.Request) -> web.Response:
    """``POST /v1/runs/{run_id}/tickets``: a short-lived, read-only ticket for this run's events."""
    tenant = tenant_of(request)
    run_id = run_id_of(request)
    await load_run(request, run_id, tenant)
    ticket = request.app[TICKETS].issue(tenant, run_id)
    return web.json_response(
        {"ticket": ticket.token, "run_id": run_id, "expires_at": ticket.expires_at_iso()},
        status=201,
        # A credential: not for any cache, and not to be sent on as a Referer.
        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
    )


async def stream_events(
    request: web.Request, tenant: str, state: RunState, plan: ResumePlan
) -> web.StreamResponse:
    if plan.finished:
        # 204 is what makes a browser's EventSource stop reconnecting for good.
        return web.Response(status=204, headers={"Cache-Control": "no-cache"})
    admission = request.app[ADMISSION]
    if not admission.open_stream(tenant):
        raise TooManyStreams(
            f"this tenant already has {admission.tenant_max_streams} open streams here; "
            "retry later"
        )
    try:
        hub = request.app[HUB]
        feed: Feed | None = None
        if state.terminal_n is None:
            # Subscribed (and confirmed) before the response starts: a pod that cannot
            # hear live events tells the client to retry instead of a stream that would
            # never move.
            try:
                feed = await hub.watch(state.run_id, state.id_prefix)
            except STORE_DOWN:
                return await retry_later(request)
        try:
            return await _stream(request, state, plan, feed)
        finally:
            if feed is not None:
                hub.unwatch(feed)
    finally:
        admission.close_stream(tenant)


async def _stream(
    request: web.Request, state: RunState, plan: ResumePlan, feed: Feed | None
) -> web.StreamResponse:
    hub = request.app[HUB]
    settings = request.app[SETTINGS]
    response = EventStreamResponse()
    await response.prepare(request)
    transport = request.transport
    if transport is None:
        return response
    sub = Subscriber(
        transport,
        last_n=plan.after_n,
        min_t=plan.min_t,
        deadline=hub.deadline(),
        backlog_limit=settings.client_backlog_bytes,
        # An HTTP/1.0 response is not chunked (it ends when the connection closes).
        chunked=request.version >= HttpVersion11,
    )
    hub.track(sub)
    try:
        head = RETRY
        gap = plan.gap_data(state.run_id)
        if gap is not None:
            head += gap_frame(gap)
        await response.write(head)
        try:
            await replay_then_live(
                hub,
                request.app[READER],
                state,
                plan,
                sub,
                response.write,
                feed,
                batch_bytes=settings.replay_batch_bytes,
            )
        except STORE_DOWN:
            # The store went away mid-replay (or the client did): end at an event
            # boundary; the client resumes by cursor.
            sub.finish(STORE_LOST)
        await sub.done
    finally:
        hub.release(sub)
    if not transport.is_closing():
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
    return response


def page_limit(request: web.Request) -> int:
    raw = request.query.get("limit", "")
    if raw == "":
        return PAGE_DEFAULT
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= PAGE_MAX:
        raise InvalidLimit(f"limit must be an integer from 1 to {PAGE_MAX}, got {raw[:32]!r}")
    return value


async def page(
    request: web.Request, state: RunState, plan: ResumePlan, limit: int
) -> dict[str, Any]:
    """Up to ``limit`` events after the cursor, as the JSON page of the contract.

    The page also stops before its event data passes ``MANTIS_PAGE_MAX_BYTES``, though it
    always holds at least one event; ``next_cursor`` then continues from the last one.
    """
    reader = request.app[READER]
    budget = request.app[SETTINGS].page_max_bytes
    events: list[dict[str, Any]] = []
    gap = plan.gap_data(state.run_id)
    if gap is not None:
        events.append({"event": "gap", "id": None, "data": gap})
    after = plan.after_n
    done = plan.finished
    wanted = limit
    used = 0
    sizer = BatchSizer(budget, ceiling=limit)
    full = False
    while not done and not full and wanted > 0:
        entries: list[Entry] = await reader.after(state.run_id, after, min(wanted, sizer.count))
        if not entries:
            break
        sizer.saw(entries)
        trimmed = trimmed_gap(state, after, entries[0])
        if trimmed is not None:
            # Trimmed since the cursor was checked (a run at its length cap): say so.
            events.append({"event": "gap", "id": None, "data": trimmed})
        for entry in entries:
            if plan.min_t is not None and entry.t <= plan.min_t:
                after = entry.n
                continue
            if used + len(entry.data) > budget and wanted < limit:
                full = True  # the next page starts with this event
                break
            after = entry.n
            used += len(entry.data)
            event_id = format_event_id(state.epoch, entry.n)
            events.append(event_json(entry.name.decode(), event_id, entry.data))
            wanted -= 1
            if entry.name == b"terminal":
                done = True
                break
            if wanted == 0:
                break
    last_id = next((e["id"] for e in reversed(events) if e["id"]), None)
    return {
        "run_id": state.run_id,
        "phase": state.phase,
        "events": events,
        "next_cursor": last_id or (format_event_id(state.epoch, after) if after else ""),
        "done": done,
    }


async def health(request: web.Request) -> web.Response:
    """Liveness: the process serves. Never touches the store (a store outage must not get
    every pod restarted); a few gauges, no secret, no store URL."""
    hub = request.app[HUB]
    return web.json_response(
        {
            "ok": True,
            "draining": request.app[ADMISSION].draining,
            "streams": hub.stream_count,
            "runs": hub.feed_count,
        }
    )


async def ready(request: web.Request) -> web.Response:
    """Readiness: 200 when the store answers and the pod is not draining, else 503."""
    if request.app[ADMISSION].draining:
        return web.json_response({"ready": False, "reason": "draining"}, status=503)
    try:
        await asyncio.wait_for(request.app[READER].ping(), timeout=2)
    except STORE_DOWN:
        return web.json_response({"ready": False, "reason": "store_unreachable"}, status=503)
    return web.json_response({"ready": True})
