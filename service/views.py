"""HTTP handlers: a run's events (``GET /v1/runs/{run_id}/events``) and a tenant's run
lifecycle feed (``GET /v1/events``), each as an SSE stream or a JSON page, by one code path."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import HttpVersion11, web
from redis.exceptions import RedisError

from runlog.ids import Cursor, IdCursor, TimeCursor, format_event_id, is_valid_run_id, parse_cursor
from runlog.keys import feed_name

from . import metrics
from .appkeys import ADMISSION, HUB, READER, SETTINGS, TICKET_GRACE, TICKETS, TOKENS
from .errors import (
    ApiError,
    InvalidCursor,
    InvalidLimit,
    InvalidRunId,
    RunNotFound,
    TooManyStreams,
    Unauthorized,
)
from .hub import RESYNC, STORE_LOST, Feed, Subscriber
from .requestlog import note_tenant
from .resume import ResumePlan, plan_resume
from .sse import RETRY, EventStreamResponse, event_json, gap_frame, retry_later, wants_stream
from .store import Entry, LogReader, RunState
from .stream import BatchSizer, replay_then_live, trimmed_gap
from .tickets import FEED_SCOPE, ExpiredTicket, InvalidTicket

# What a request meets when the store is away (the middleware maps these to 503 for JSON).
STORE_DOWN = (RedisError, OSError, TimeoutError)

PAGE_DEFAULT = 1000
PAGE_MAX = 10_000


TicketScope = Literal["run", "feed"]
RUN_TICKETS: TicketScope = "run"
FEED_TICKETS: TicketScope = "feed"


def tenant_of(request: web.Request, *, tickets: TicketScope | None = None) -> str:
    """The authenticated tenant, or 401 (absent and unknown tokens look the same).

    ``tickets`` (read-only event endpoints only): without the header, a ``ticket`` query
    parameter of that scope is accepted: issued for the run in the URL (``run``), or for
    the tenant's feed (``feed``). A stream reconnecting with ``Last-Event-ID`` may use it
    until the ticket's max lifetime.
    """
    token = request.headers.get("X-Mantis-Token")
    ticket = request.query.get("ticket") if tickets is not None else None
    if token is None and ticket:
        resuming = bool(request.headers.get("Last-Event-ID", "").strip()) and wants_stream(request)
        book = request.app[TICKETS]
        scope = FEED_SCOPE if tickets == FEED_TICKETS else request.match_info["run_id"]
        try:
            grant = book.grant(ticket, scope, resuming=resuming)
            note_tenant(request, grant.tenant)
            if grant.grace_since_ms is not None:
                request[TICKET_GRACE] = grant.grace_since_ms
            return grant.tenant
        except ExpiredTicket:
            raise Unauthorized("the ticket has expired; request a new one") from None
        except InvalidTicket:
            what = "the tenant's feed" if tickets == FEED_TICKETS else "this run"
            raise Unauthorized(f"the ticket is not valid for {what}") from None
    tenant = request.app[TOKENS].tenant_for(token)
    if tenant is None:
        raise Unauthorized("a valid X-Mantis-Token header is required")
    note_tenant(request, tenant)
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


def page_limit_of(request: web.Request) -> int | None:
    """None for a stream, else the JSON page's ``limit``."""
    return None if wants_stream(request) else page_limit(request)


@dataclass(frozen=True, slots=True)
class LogView:
    """What an events endpoint serves: one log of the store, and the fields that name it.

    A run's log and a tenant's feed have one shape (``runlog.keys.feed_name``), so one code
    path serves both; they differ only in the log's name in the store, the fields naming it
    to the client (in a ``gap`` event and the JSON page) and whether the page has a phase.
    """

    name: str
    labels: Mapping[str, str]
    with_phase: bool

    @classmethod
    def run(cls, run_id: str) -> LogView:
        return cls(run_id, {"run_id": run_id}, with_phase=True)

    @classmethod
    def feed(cls, tenant: str) -> LogView:
        return cls(feed_name(tenant), {"tenant": tenant}, with_phase=False)

    def page_head(self, state: RunState | None) -> dict[str, Any]:
        head: dict[str, Any] = dict(self.labels)
        if self.with_phase:
            head["phase"] = state.phase if state is not None else None
        return head


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
    tenant = tenant_of(request, tickets=RUN_TICKETS)
    run_id = run_id_of(request)
    cursor = cursor_of(request)
    limit = page_limit_of(request)
    view = LogView.run(run_id)

    async def load() -> RunState:
        return await load_run(request, run_id, tenant)

    return await serve_log(request, view, tenant, load, cursor, limit)


async def tenant_events(request: web.Request) -> web.StreamResponse:
    """``GET /v1/events``: the tenant's run lifecycle feed, as a live SSE stream or a page.

    A tenant with no run yet has no feed: the stream stays open (pings, soft limit) and
    starts once the first run is created; the page is empty. Nothing is created here.
    """
    tenant = tenant_of(request, tickets=FEED_TICKETS)
    cursor = cursor_of(request)
    limit = page_limit_of(request)
    view = LogView.feed(tenant)

    async def load() -> RunState | None:
        return await request.app[READER].state(view.name)

    return await serve_log(request, view, tenant, load, cursor, limit)


async def serve_log(
    request: web.Request,
    view: LogView,
    tenant: str,
    load: Callable[[], Awaitable[RunState | None]],
    cursor: Cursor,
    limit: int | None,
) -> web.StreamResponse:
    """One log after ``cursor``: a stream (``limit`` None) or a JSON page of ``limit``.

    ``load`` reads the log's state; None: the log does not exist yet (only a tenant feed
    can be served so). A stream that cannot be served now (pod draining, store away)
    answers so that the client's EventSource retries; a JSON page answers 503.
    """
    if limit is not None:
        state = await load()
        if state is None:
            return web.json_response(
                {
                    **view.page_head(None),
                    "events": [],
                    "next_cursor": cursor.raw if cursor is not None else "",
                    "done": False,
                }
            )
        return web.json_response(
            await page(request, view, state, await resolve(request, state, cursor), limit)
        )
    if request.app[ADMISSION].draining:
        # This pod is going away: the client's EventSource retries (on another pod).
        return await retry_later(request)
    plan: ResumePlan | None = None
    try:
        state = await load()
        if state is not None:
            grace = request.get(TICKET_GRACE)
            if grace is not None:
                await check_grace(request, view, state, cursor, grace)
            plan = await resolve(request, state, cursor)
    except ApiError:
        raise  # Unauthorized is a PermissionError, an OSError: not the store's fault
    except STORE_DOWN:
        return await retry_later(request)
    return await stream_events(request, view, tenant, state, plan, cursor)


async def create_ticket(request: web.Request) -> web.Response:
    """``POST /v1/runs/{run_id}/tickets``: a short-lived, read-only ticket for this run's events."""
    tenant = tenant_of(request)
    run_id = run_id_of(request)
    await load_run(request, run_id, tenant)
    ticket = request.app[TICKETS].issue(tenant, run_id)
    return _ticket_response(
        {"ticket": ticket.token, "run_id": run_id, "expires_at": ticket.expires_at_iso()}
    )


async def create_feed_ticket(request: web.Request) -> web.Response:
    """``POST /v1/events/tickets``: a short-lived, read-only ticket for the tenant's feed."""
    tenant = tenant_of(request)
    ticket = request.app[TICKETS].issue_feed(tenant)
    return _ticket_response({"ticket": ticket.token, "expires_at": ticket.expires_at_iso()})


def _ticket_response(body: dict[str, Any]) -> web.Response:
    return web.json_response(
        body,
        status=201,
        # A credential: not for any cache, and not to be sent on as a Referer.
        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
    )


async def check_grace(
    request: web.Request, view: LogView, state: RunState, cursor: Cursor, since_ms: int
) -> None:
    """An expired ticket resumes a stream only from a cursor that was up to date when the
    ticket expired: an event id of this log with no event from before the expiry after it.
    A forged cursor (or a timestamp) would otherwise read the history with a leaked ticket."""
    refused = Unauthorized("the ticket has expired; request a new one")
    if not isinstance(cursor, IdCursor) or cursor.epoch != state.epoch:
        raise refused
    if not state.first_n - 1 <= cursor.n <= state.last_n:
        raise refused  # ahead of the log, or its next event trimmed: nothing to vouch by
    following = await request.app[READER].entry(view.name, cursor.n + 1)
    if following is not None and following.t <= since_ms * 1000:
        raise refused


async def stream_events(
    request: web.Request,
    view: LogView,
    tenant: str,
    state: RunState | None,
    plan: ResumePlan | None,
    cursor: Cursor,
) -> web.StreamResponse:
    if plan is not None and plan.finished:
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
        if state is None or state.terminal_n is None:
            # Subscribed (and confirmed) before the response starts: a pod that cannot
            # hear live events tells the client to retry instead of a stream that would
            # never move.
            try:
                feed = await hub.watch(view.name, state.id_prefix if state is not None else None)
            except STORE_DOWN:
                return await retry_later(request)
        try:
            return await _stream(request, view, state, plan, cursor, feed)
        finally:
            if feed is not None:
                hub.unwatch(feed)
    finally:
        admission.close_stream(tenant)


async def _stream(
    request: web.Request,
    view: LogView,
    state: RunState | None,
    plan: ResumePlan | None,
    cursor: Cursor,
    feed: Feed | None,
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
        last_n=plan.after_n if plan is not None else 0,
        min_t=plan.min_t if plan is not None else None,
        deadline=hub.deadline(),
        backlog_limit=settings.client_backlog_bytes,
        # An HTTP/1.0 response is not chunked (it ends when the connection closes).
        chunked=request.version >= HttpVersion11,
    )
    hub.track(sub)
    resumed = bool(request.headers.get("Last-Event-ID") or request.query.get("since"))
    owner = state.tenant if state is not None else view.labels.get("tenant", "")
    meter = metrics.StreamMeter(view.name, owner, resumed=resumed)
    try:
        head = RETRY
        try:
            if state is None and feed is not None:
                await response.write(head)
                head = b""
                state = await wait_for_log(request.app[READER], view, feed, sub)
            if state is not None:
                if plan is None:
                    plan = await resolve(request, state, cursor)
                    sub.last_n, sub.min_t = plan.after_n, plan.min_t
                gap = plan.gap_data(view.labels)
                if gap is not None:
                    head += gap_frame(gap)
                    metrics.count_gap()
                if head:
                    await response.write(head)
                await replay_then_live(
                    hub,
                    request.app[READER],
                    state,
                    plan,
                    sub,
                    response.write,
                    feed,
                    batch_bytes=settings.replay_batch_bytes,
                    labels=view.labels,
                )
        except STORE_DOWN:
            # The store went away mid-replay (or the client did): end at an event
            # boundary; the client resumes by cursor.
            sub.finish(STORE_LOST)
        await sub.done
    finally:
        hub.release(sub)
        meter.close(sub.done.result() if sub.done.done() else "closed")
    if not transport.is_closing():
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
    return response


async def wait_for_log(
    reader: LogReader, view: LogView, feed: Feed, sub: Subscriber
) -> RunState | None:
    """The state of a log that did not exist when its stream opened (a tenant's feed before
    its first run), once its first event is announced; None if the stream ends first.

    The channel is already subscribed, so the re-read below and the announcement cannot
    both miss the log's creation. Meanwhile the stream gets pings and its soft limit like
    any other.
    """
    for _ in range(2):
        try:
            state = await reader.state(view.name)
        except RedisError:
            sub.finish(STORE_LOST)
            return None
        if state is not None:
            feed.know(state.id_prefix)
            return state
        if sub.finished:
            return None
        await asyncio.wait((feed.appeared, sub.done), return_when=asyncio.FIRST_COMPLETED)
    # Announced, yet gone again at once (deleted): end; the client reconnects and waits anew.
    sub.finish(RESYNC)
    return None


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
    request: web.Request, view: LogView, state: RunState, plan: ResumePlan, limit: int
) -> dict[str, Any]:
    """Up to ``limit`` events after the cursor, as the JSON page of the contract.

    The page also stops before its event data passes ``MANTIS_PAGE_MAX_BYTES``, though it
    always holds at least one event; ``next_cursor`` then continues from the last one.
    """
    reader = request.app[READER]
    budget = request.app[SETTINGS].page_max_bytes
    events: list[dict[str, Any]] = []
    gap = plan.gap_data(view.labels)
    if gap is not None:
        events.append({"event": "gap", "id": None, "data": gap})
        metrics.count_gap()
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
        trimmed = trimmed_gap(view.labels, state, after, entries[0])
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
        **view.page_head(state),
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
