"""The tenant feed ``GET /v1/events`` and its tickets, against a real redis-server.

The feed is written by the core's scripts (one ``run`` event per lifecycle change, in the
same script as the change); these tests hold the service to serving it like a run's log:
ordered, resumable, gap-marked when trimmed, one tenant's only, and readable by a feed
ticket that opens nothing else.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

import pytest
import redis

from runlog.calls import LogLimits
from runlog.keys import feed_name, log_key
from runner_bridge import Bridge
from service.app import create_app
from service.appkeys import HUB
from service.auth import TokenTable
from service.settings import Settings

from .conftest import TOKEN_SPEC, Service
from .contract_support import EVENT_ID_RE, Comment, Event, Reader, Retry

FEED = "/v1/events"
FEED_SSE = "/v1/events?sse=true"


@pytest.fixture
def make_feed_service(aiohttp_client: Callable[..., Any], redis_url: str) -> Callable[..., Any]:
    """The app in-process over the real redis-server (the feed is not written on Cluster and
    these tests want the real thing, not the embedded store)."""

    async def start(**overrides: Any) -> Service:
        settings = Settings(tenant_tokens=TOKEN_SPEC, redis_url=redis_url, **overrides)
        app = create_app(settings, TokenTable.parse(TOKEN_SPEC), redis_url)
        client = await aiohttp_client(app, server_kwargs={"host": "127.0.0.1"})
        return Service(base=str(client.make_url("")).rstrip("/"), client=client, settings=settings)

    return start


@pytest.fixture
def sync_bridge(redis_url: str) -> Any:
    with Bridge.from_url(redis_url, limits=LogLimits()) as b:
        yield b


def lifecycle(bridge: Bridge, run_id: str, tenant: str = "acme", end: str = "complete") -> None:
    """A whole run: created (queued), running, two rows, then ``end``."""
    run = bridge.open_run(run_id, tenant=tenant)
    run.set_phase("running")
    run.append({"kind": "step", "step_index": 1, "type": "click"})
    run.append({"kind": "extract", "step_index": 2, "row": {"title": "x"}})
    run.finish(end)


async def page(svc: Service, tenant: str = "acme", **params: str) -> dict[str, Any]:
    resp = await svc.client.get(FEED, params=params, headers=svc.headers(tenant))
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


def run_events(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["data"]["run_id"], e["data"]["phase"]) for e in events if e["event"] == "run"]


async def test_feed_page_lists_every_lifecycle_change_in_order(
    make_feed_service, sync_bridge: Bridge
) -> None:
    svc = await make_feed_service()
    lifecycle(sync_bridge, "r1")
    lifecycle(sync_bridge, "r2", end="halted")
    body = await page(svc)
    assert body["tenant"] == "acme" and body["done"] is False
    assert "run_id" not in body and "phase" not in body
    events = body["events"]
    assert run_events(events) == [
        ("r1", "queued"), ("r1", "running"), ("r1", "complete"),
        ("r2", "queued"), ("r2", "running"), ("r2", "halted"),
    ]  # fmt: skip
    assert all(EVENT_ID_RE.fullmatch(e["id"]) for e in events)
    assert all(a["id"] < b["id"] for a, b in itertools.pairwise(events))
    assert body["next_cursor"] == events[-1]["id"]
    # The data is the run object, as of that change.
    final = events[2]["data"]
    assert final["steps"] == 1 and final["rows"] == 1 and final["events"] == 6
    assert set(final) == {
        "run_id", "phase", "created_at", "updated_at", "halt_class", "events",
        "last_event_id", "cancel_requested", "steps", "rows",
    }  # fmt: skip
    # Paging: two at a time, each page after the previous one's cursor, nothing missed.
    seen: list[dict[str, Any]] = []
    cursor = ""
    for _ in range(10):
        part = await page(svc, since=cursor, limit="2")
        if not part["events"]:
            break
        seen += part["events"]
        cursor = part["next_cursor"]
    assert seen == events


async def test_feed_stream_replays_then_goes_live_and_never_ends_with_a_terminal(
    make_feed_service, sync_bridge: Bridge
) -> None:
    svc = await make_feed_service()
    lifecycle(sync_bridge, "r1")
    async with svc.client.get(FEED_SSE, headers=svc.headers()) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        reader = Reader(resp)
        await reader.until(lambda r: len(r.events) == 3)
        run = sync_bridge.open_run("r2", tenant="acme")
        run.set_phase("running")
        run.finish("cancelled")
        await reader.until(lambda r: len(r.events) == 6)
        assert not reader.ended  # a feed has no terminal event: it stays open
    assert reader.items[0] == Retry(2000)
    got = reader.events
    assert [(e.data["run_id"], e.data["phase"]) for e in got] == [
        ("r1", "queued"), ("r1", "running"), ("r1", "complete"),
        ("r2", "queued"), ("r2", "running"), ("r2", "cancelled"),
    ]  # fmt: skip
    assert [e.n for e in got] == list(range(1, 7))
    assert {e.event for e in got} == {"run"}


async def test_an_empty_feed_waits_for_the_first_run_and_creates_nothing(
    make_feed_service, sync_bridge: Bridge, redis_url: str
) -> None:
    svc = await make_feed_service(heartbeat_s=0.2)
    client = redis.Redis.from_url(redis_url)
    try:
        # The page of a feed that does not exist yet: empty, not an error.
        assert await page(svc) == {"tenant": "acme", "events": [], "next_cursor": "", "done": False}
        async with svc.client.get(FEED_SSE, headers=svc.headers()) as resp:
            assert resp.status == 200
            reader = Reader(resp)
            # Open and alive (retry, then pings), while nothing exists in the store.
            await reader.until(lambda r: any(isinstance(i, Comment) for i in r.items))
            assert reader.items[0] == Retry(2000) and reader.events == []
            assert client.keys("*") == []
            lifecycle(sync_bridge, "first")
            await reader.until(lambda r: len(r.events) == 3)
            assert [(e.data["run_id"], e.data["phase"]) for e in reader.events] == [
                ("first", "queued"), ("first", "running"), ("first", "complete"),
            ]  # fmt: skip
            assert [e.n for e in reader.events] == [1, 2, 3]
            # Live after the wait, too.
            lifecycle(sync_bridge, "second")
            await reader.until(lambda r: len(r.events) == 6)
            assert [e.n for e in reader.events] == list(range(1, 7))
    finally:
        client.close()


async def test_resume_by_last_event_id_and_since(make_feed_service, sync_bridge: Bridge) -> None:
    svc = await make_feed_service()
    for i in range(4):
        lifecycle(sync_bridge, f"r{i}")
    everything = (await page(svc))["events"]
    assert len(everything) == 12
    cut = everything[4]["id"]
    async with svc.client.get(
        FEED_SSE, headers=svc.headers(**{"Last-Event-ID": cut}), params={"since": "ignored"}
    ) as resp:
        assert resp.status == 200
        reader = Reader(resp)
        await reader.until(lambda r: len(r.events) == 7)
        lifecycle(sync_bridge, "late")
        await reader.until(lambda r: len(r.events) == 10)
    got = reader.events
    assert [e.id for e in got[:7]] == [e["id"] for e in everything[5:]]
    assert [e.n for e in got] == list(range(6, 16))
    # ``since`` on a page, and a timestamp cursor (form b) works on the feed as well.
    after = await page(svc, since=cut)
    assert [e["id"] for e in after["events"]][:7] == [e["id"] for e in everything[5:]]
    stamp = everything[-1]["data"]["updated_at"]
    later = await page(svc, since=stamp)
    assert all(e["data"]["run_id"] == "late" for e in later["events"])


async def test_gap_event_when_the_feed_was_trimmed(make_feed_service, redis_url: str) -> None:
    svc = await make_feed_service()
    # The feed is trimmed with the limits of whoever writes the change (MAXLEN ~ 20 here).
    with Bridge.from_url(redis_url, limits=LogLimits(maxlen=20)) as small:
        early = None
        for i in range(120):
            run = small.open_run(f"r{i}", tenant="acme")
            run.set_phase("running")
            if early is None:
                early = (await page(svc))["events"][0]["id"]
        client = small.client
        first = client.xrange(log_key(feed_name("acme")), "-", "+", count=1)
        first_n = int(first[0][0].split(b"-")[0])
        last_n = int(client.hget(f"mantis:{{{feed_name('acme')}}}:meta", "n"))
    assert first_n > 2, "the feed was not trimmed; the test needs a trimmed feed"
    assert early is not None
    first_id = early.rsplit("-", 1)[0] + f"-{first_n:010d}"
    async with svc.client.get(
        FEED_SSE, headers=svc.headers(**{"Last-Event-ID": early})
    ) as resp:
        reader = Reader(resp)
        await reader.until(lambda r: any(e.n == last_n for e in r.events if e.id))
    gap = reader.items[1]
    assert isinstance(gap, Event) and gap.event == "gap" and gap.id is None
    assert gap.data == {"tenant": "acme", "after": early, "resumed_from": first_id}
    rest = [e for e in reader.events if e.event != "gap"]
    assert [e.n for e in rest] == list(range(first_n, last_n + 1))
    # The JSON page says the same, and an empty cursor on a trimmed feed is a gap too.
    body = await page(svc)
    assert body["events"][0] == {
        "event": "gap", "id": None,
        "data": {"tenant": "acme", "after": "", "resumed_from": first_id},
    }  # fmt: skip


async def test_tenant_b_never_sees_tenant_a(make_feed_service, sync_bridge: Bridge) -> None:
    svc = await make_feed_service()
    async with svc.client.get(FEED_SSE, headers=svc.headers("other")) as other_resp:
        other = Reader(other_resp)
        async with svc.client.get(FEED_SSE, headers=svc.headers("acme")) as acme_resp:
            acme = Reader(acme_resp)
            lifecycle(sync_bridge, "a1", tenant="acme")
            lifecycle(sync_bridge, "b1", tenant="other")
            lifecycle(sync_bridge, "a2", tenant="acme")
            await acme.until(lambda r: len(r.events) == 6)
            await other.until(lambda r: len(r.events) == 3)
            # Later acme runs do not reach the other tenant's open stream either.
            lifecycle(sync_bridge, "a3", tenant="acme")
            await acme.until(lambda r: len(r.events) == 9)
            lifecycle(sync_bridge, "b2", tenant="other")
            await other.until(lambda r: len(r.events) == 6)
    assert {e.data["run_id"] for e in acme.events} == {"a1", "a2", "a3"}
    assert {e.data["run_id"] for e in other.events} == {"b1", "b2"}
    assert {e["data"]["run_id"] for e in (await page(svc, "other"))["events"]} == {"b1", "b2"}
    # No token, or a wrong one: 401, nothing listed.
    resp = await svc.client.get(FEED)
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == "unauthorized"


async def test_one_subscription_per_tenant_per_pod(
    make_feed_service, sync_bridge: Bridge
) -> None:
    svc = await make_feed_service()
    lifecycle(sync_bridge, "r1")
    hub = svc.client.app[HUB]
    readers = []
    async with asyncio.timeout(20):
        responses = [await svc.client.get(FEED_SSE, headers=svc.headers()) for _ in range(5)]
        for resp in responses:
            reader = Reader(resp)
            await reader.until(lambda r: len(r.events) == 3)
            readers.append(reader)
        assert hub.feed_count == 1 and hub.stream_count == 5
        lifecycle(sync_bridge, "r2")
        for reader in readers:
            await reader.until(lambda r: len(r.events) == 6)
            assert [e.n for e in reader.events] == list(range(1, 7))
        for resp in responses:
            resp.close()


# -- feed tickets ----------------------------------------------------------------------


async def feed_ticket(svc: Service, tenant: str = "acme") -> str:
    resp = await svc.client.post("/v1/events/tickets", headers=svc.headers(tenant))
    assert resp.status == 201, await resp.text()
    assert resp.headers["Cache-Control"] == "no-store"
    body = await resp.json()
    assert set(body) == {"ticket", "expires_at"}
    assert body["expires_at"].endswith("Z")
    ticket: str = body["ticket"]
    return ticket


async def test_a_feed_ticket_opens_its_tenants_feed_and_nothing_else(
    make_feed_service, sync_bridge: Bridge
) -> None:
    svc = await make_feed_service()
    lifecycle(sync_bridge, "r1")
    lifecycle(sync_bridge, "b1", tenant="other")
    ticket = await feed_ticket(svc)
    # The page and the stream, by ticket alone.
    resp = await svc.client.get(FEED, params={"ticket": ticket})
    assert resp.status == 200
    assert {e["data"]["run_id"] for e in (await resp.json())["events"]} == {"r1"}
    async with svc.client.get(FEED_SSE, params={"ticket": ticket}) as stream:
        assert stream.status == 200
        reader = Reader(stream)
        await reader.until(lambda r: len(r.events) == 3)
    # The other tenant's ticket reads the other tenant's feed only.
    other = await feed_ticket(svc, "other")
    resp = await svc.client.get(FEED, params={"ticket": other})
    assert {e["data"]["run_id"] for e in (await resp.json())["events"]} == {"b1"}

    async def status(method: str, path: str, **params: str) -> int:
        r = await svc.client.request(method, path, params=params)
        await r.read()
        return r.status

    # A feed ticket opens no run: not its events, not a run ticket, not the run, no cancel.
    assert await status("GET", "/v1/runs/r1/events", ticket=ticket) == 401
    assert await status("GET", "/v1/runs/r1/events", ticket=ticket, sse="true") == 401
    assert await status("POST", "/v1/runs/r1/tickets", ticket=ticket) == 401
    assert await status("GET", "/v1/runs/r1", ticket=ticket) == 401
    assert await status("POST", "/v1/runs/r1/cancel", ticket=ticket) == 401
    # It mints nothing either: a feed ticket is not a token.
    assert await status("POST", "/v1/events/tickets", ticket=ticket) == 401
    # A run ticket does not open the feed.
    resp = await svc.client.post("/v1/runs/r1/tickets", headers=svc.headers())
    run_ticket = (await resp.json())["ticket"]
    assert await status("GET", FEED, ticket=run_ticket) == 401
    assert await status("GET", "/v1/events", ticket=run_ticket, sse="true") == 401
    assert await status("GET", "/v1/runs/r1/events", ticket=run_ticket) == 200
    # Forged: 401, saying what is wrong without echoing it.
    forged = ticket[:-4] + ("AAAA" if not ticket.endswith("AAAA") else "BBBB")
    resp = await svc.client.get(FEED, params={"ticket": forged})
    assert resp.status == 401
    body = await resp.text()
    assert forged not in body and "feed" in body
    # A header token wins over a ticket.
    resp = await svc.client.get(FEED, params={"ticket": other}, headers=svc.headers("acme"))
    assert {e["data"]["run_id"] for e in (await resp.json())["events"]} == {"r1"}


async def test_an_expired_feed_ticket_may_only_resume(
    make_feed_service, sync_bridge: Bridge
) -> None:
    svc = await make_feed_service(ticket_ttl_s=0.2)
    lifecycle(sync_bridge, "r1")
    ticket = await feed_ticket(svc)
    events = (await page(svc))["events"]
    first_id, last_id = events[0]["id"], events[-1]["id"]
    await asyncio.sleep(0.3)  # the ticket's TTL has to pass; nothing to await instead
    resp = await svc.client.get(FEED_SSE, params={"ticket": ticket})
    assert resp.status == 401
    assert "expired" in (await resp.json())["error"]["message"]
    # A reconnecting EventSource (Last-Event-ID) is let through until the max lifetime, if
    # its cursor was up to date when the ticket expired (not one behind older events).
    behind = await svc.client.get(
        FEED_SSE, params={"ticket": ticket}, headers={"Last-Event-ID": first_id}
    )
    assert behind.status == 401
    behind.close()
    async with svc.client.get(
        FEED_SSE, params={"ticket": ticket}, headers={"Last-Event-ID": last_id}
    ) as stream:
        assert stream.status == 200
        reader = Reader(stream)
        lifecycle(sync_bridge, "r2")
        await reader.until(lambda r: len(r.events) >= 3)
    assert [e.n for e in reader.events][:3] == [4, 5, 6]


async def test_feed_endpoints_answer_cors_for_listed_origins(
    make_feed_service, sync_bridge: Bridge
) -> None:
    origin = "http://dash.example:8443"
    svc = await make_feed_service(cors_origins=(origin,))
    lifecycle(sync_bridge, "r1")
    for method, path in (("GET", FEED), ("GET", FEED_SSE), ("POST", "/v1/events/tickets")):
        resp = await svc.client.request(method, path, headers=svc.headers(Origin=origin))
        assert resp.headers.get("Access-Control-Allow-Origin") == origin, path
        resp.close()
    resp = await svc.client.get(FEED, headers={"Origin": origin})
    assert resp.status == 401 and resp.headers.get("Access-Control-Allow-Origin") == origin
    pre = await svc.client.options(
        "/v1/events/tickets",
        headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
    )
    assert pre.status == 204
    assert "X-Mantis-Token" in pre.headers["Access-Control-Allow-Headers"]
    resp = await svc.client.get(FEED, headers=svc.headers(Origin="http://evil.example"))
    assert "Access-Control-Allow-Origin" not in resp.headers



async def test_soft_limit_ends_feed_streams_even_empty_ones_and_resume_continues(
    make_feed_service, sync_bridge: Bridge
) -> None:
    svc = await make_feed_service(stream_max_s=0.5, heartbeat_s=0.1)
    # An empty feed's stream is a stream like any other: it ends at its soft limit.
    async with svc.client.get(FEED_SSE, headers=svc.headers()) as resp:
        empty = Reader(resp)
        await empty.to_end()
    assert empty.ended and empty.clean and empty.events == []
    lifecycle(sync_bridge, "r1")
    async with svc.client.get(FEED_SSE, headers=svc.headers()) as resp:
        first = Reader(resp)
        await first.to_end()
    assert first.clean and [e.n for e in first.events] == [1, 2, 3]
    lifecycle(sync_bridge, "r2")
    last_id = first.events[-1].id
    assert last_id is not None
    async with svc.client.get(FEED_SSE, headers=svc.headers(**{"Last-Event-ID": last_id})) as resp:
        second = Reader(resp)
        await second.to_end()
    assert [e.n for e in second.events] == [4, 5, 6]


async def test_the_service_trims_the_feed_with_mantis_stream_maxlen(
    make_feed_service, sync_bridge: Bridge
) -> None:
    # Lifecycle changes the service makes itself (a cancel) trim the feed to its own
    # MANTIS_STREAM_MAXLEN; a client resuming from before the cut is told.
    svc = await make_feed_service(stream_maxlen=20)
    for i in range(130):
        sync_bridge.open_run(f"q{i}", tenant="acme")
    first_id = (await page(svc, limit="1"))["events"][0]["id"]
    for i in range(130):
        resp = await svc.client.post(f"/v1/runs/q{i}/cancel", headers=svc.headers())
        assert resp.status == 200, await resp.text()
    body = await page(svc, since=first_id, limit="10000")
    gap = body["events"][0]
    assert gap["event"] == "gap" and gap["id"] is None
    assert gap["data"]["tenant"] == "acme" and gap["data"]["after"] == first_id
    rest = body["events"][1:]
    assert rest[0]["id"] == gap["data"]["resumed_from"]
    assert len(rest) < 260 - 100  # whole stream nodes were trimmed away
    assert [e["data"]["phase"] for e in rest[-3:]] == ["cancelled"] * 3
    assert rest[-1]["data"]["run_id"] == "q129"
