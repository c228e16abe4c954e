"""CONTRACT section 3, the stream itself: wire format, naming, data, order, pings, ends.

Black box: rows are published with the bridge, read back over HTTP from the service, on
both stores (``store_url`` is parametrized under ``make_service`` and ``bridge``).
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import time
from datetime import datetime
from typing import Any

import pytest
import sseclient
from yarl import URL

from runner_bridge import AsyncBridge, Bridge

from .conftest import fixture_path
from .contract_support import (
    EVENT_ID_RE,
    SSE,
    Comment,
    Dechunker,
    Event,
    RawConn,
    Retry,
    StrictSSE,
    assert_contiguous,
    bulk_append,
    events_of,
    is_terminal,
    parse_body,
    publish_jsonl,
    read_stream,
    steps,
)


def publish_finished(bridge: Bridge, run_id: str = "r1", rows: int = 3) -> list[str]:
    """queued, running, ``rows`` steps, complete, terminal; returns the bridge's ids."""
    run = bridge.open_run(run_id, tenant="acme")
    ids = [run.set_phase("running")]
    ids += [run.append(row) for row in steps(0, rows)]
    ids.append(run.finish("complete"))
    return ids


async def get_body(svc: Any, path: str, **headers: str) -> bytes:
    resp = await svc.client.get(path, headers=svc.headers(**headers))
    assert resp.status == 200, await resp.text()
    body: bytes = await resp.read()
    return body


# -- headers and framing -------------------------------------------------------------


@pytest.mark.parametrize(
    "path, headers",
    [
        ("/v1/runs/r1/events?sse=true", {}),
        ("/v1/runs/r1/events", {"Accept": "text/event-stream"}),
    ],
    ids=["sse-query", "accept-header"],
)
async def test_stream_headers_and_never_compressed(
    make_service, bridge: Bridge, path: str, headers: dict[str, str]
) -> None:
    """Content-Type, Cache-Control, X-Accel-Buffering as specified; no compression even
    when the client offers gzip (read over a raw socket, so nothing decodes it for us)."""
    svc = await make_service()
    publish_finished(bridge)
    port = URL(svc.base).port
    assert port is not None
    conn = await RawConn.get(
        port,
        path,
        {**svc.headers(), **headers, "Accept-Encoding": "gzip, deflate, br", "Connection": "close"},
    )
    try:
        raw, how = await conn.read_to_end()
    finally:
        conn.close()
    assert conn.status == 200
    assert conn.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert conn.headers["cache-control"] == "no-cache"
    assert conn.headers["x-accel-buffering"] == "no"
    assert "content-encoding" not in conn.headers
    body = Dechunker().feed(raw) if conn.headers.get("transfer-encoding") == "chunked" else raw
    assert body.startswith(b"retry: 2000\n\n"), body[:60]
    assert len(events_of(parse_body(body))) == 7
    assert how == "eof"


async def test_retry_2000_comes_first_and_once(make_service, bridge: Bridge) -> None:
    svc = await make_service()
    publish_finished(bridge)
    body = await get_body(svc, SSE.format(run_id="r1"))
    items = parse_body(body)
    assert items[0] == Retry(2000)
    assert items.count(Retry(2000)) == 1


@pytest.mark.parametrize(
    "query, accept, streaming",
    [
        ("?sse=true", None, True),
        ("?sse=true", "application/json", True),
        ("", "text/event-stream", True),
        ("", None, False),
        ("", "application/json", False),
        ("?sse=false", None, False),
    ],
)
async def test_sse_query_or_accept_streams_otherwise_json_page(
    make_service, bridge: Bridge, query: str, accept: str | None, streaming: bool
) -> None:
    svc = await make_service()
    publish_finished(bridge)
    headers = {"Accept": accept} if accept else {}
    resp = await svc.client.get(f"/v1/runs/r1/events{query}", headers=svc.headers(**headers))
    assert resp.status == 200
    if streaming:
        assert resp.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        assert len(events_of(parse_body(await resp.read()))) == 7
    else:
        assert resp.headers["Content-Type"].startswith("application/json")
        page = await resp.json()
        assert [e["event"] for e in page["events"]] == [
            "phase", "phase", "step", "step", "step", "phase", "terminal"
        ][: len(page["events"])]
        assert page["done"] is True


async def test_every_event_has_a_unique_strictly_increasing_non_empty_id(
    make_service, bridge: Bridge
) -> None:
    svc = await make_service()
    run = bridge.open_run("r1", tenant="acme")
    published = [run.set_phase("running")]
    published += [run.append(row) for row in steps(0, 12)]
    published.append(run.set_phase("recovering"))
    published.append(run.set_phase("running"))
    published.append(run.finish("halted", halt_class="captcha"))
    body = await get_body(svc, SSE.format(run_id="r1"))
    events = events_of(parse_body(body))  # parse_body also rejects any empty id line
    ids = [e.id or "" for e in events]
    assert all(EVENT_ID_RE.fullmatch(i) for i in ids), ids
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    numbers = [e.n for e in events]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    assert body.count(b"\nid: ") == len(events)
    # The ids the bridge hands back are the ones clients see (set_phase/finish return
    # the last record they wrote).
    by_id = {e.id: e for e in events}
    assert all(event_id in by_id for event_id in published)
    assert by_id[published[-1]].event == "terminal"


# -- naming and data -----------------------------------------------------------------


def expected_name(row: dict[str, Any]) -> str:
    import re

    name = row.get("kind", row.get("type"))
    if isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
        return name
    return "message"


async def test_hostile_rows_keep_framing_and_data_as_published(
    make_service, bridge: Bridge
) -> None:
    """reasoning-tricky.jsonl: names fall back to message, nothing breaks framing, each
    data line is one JSON line equal to the published row (a stamped ts added)."""
    svc = await make_service()
    published = publish_jsonl(bridge, fixture_path("reasoning-tricky.jsonl"), "tricky")
    rows = [row for row in published if row is not None]
    body = await get_body(svc, SSE.format(run_id="tricky"))
    events = events_of(parse_body(body))
    row_events = [e for e in events if e.event not in ("phase", "terminal")]
    assert [e.event for e in events[:2]] == ["phase", "phase"]
    assert [e.event for e in events[-2:]] == ["phase", "terminal"]
    assert len(row_events) == len(rows) == 11
    assert [e.event for e in row_events] == [
        "step", "step", "scroll", "message", "message", "message", "extract", "extract",
        "step", "step", "message",
    ]
    assert [e.event for e in row_events] == [expected_name(r) for r in rows]
    for event, row in zip(row_events, rows, strict=True):
        if "ts" in row:
            assert event.data == row
        else:
            data = dict(event.data)
            stamped = data.pop("ts")
            assert data == row
            assert datetime.fromisoformat(stamped).year >= 2026
    # A row's own "id"/"event" fields are data, never the SSE id or name.
    posing = next(e for e in row_events if e.data.get("id") == "not-the-event-id")
    assert posing.event == "step" and posing.id != "not-the-event-id"
    assert body.count(b"\nevent: terminal\n") == 1
    # A standard SSE parser reads exactly the same events.
    standard = list(sseclient.SSEClient(io.BytesIO(body)).events())
    assert [(s.event, s.id, json.loads(s.data)) for s in standard] == [
        (e.event, e.id, e.data) for e in events
    ]


@pytest.mark.parametrize(
    "row, name",
    [
        ({"kind": "step", "type": "click"}, "step"),
        ({"type": "scroll"}, "scroll"),
        ({"note": "neither"}, "message"),
        ({"kind": "has space"}, "message"),
        ({"type": "x" * 65}, "message"),
        ({"kind": "x" * 64}, "x" * 64),
        ({"kind": "ok.name-1_2"}, "ok.name-1_2"),
        ({"kind": "a\r\ndata: {}"}, "message"),
        ({"kind": 7}, "message"),
        ({"kind": ""}, "message"),
    ],
)
async def test_event_name_is_kind_else_type_else_message(
    make_service, bridge: Bridge, row: dict[str, Any], name: str
) -> None:
    svc = await make_service()
    run = bridge.open_run("r1", tenant="acme")
    run.append(row)
    resp = await svc.client.get(SSE.format(run_id="r1"), headers=svc.headers())
    got = await read_stream(resp, stop=lambda item: isinstance(item, Event) and item.n == 2)
    event = got.events[-1]
    assert event.event == name
    data = dict(event.data)
    data.pop("ts")
    assert data == row


@pytest.mark.parametrize(
    "finish, halt_class",
    [("complete", None), ("cancelled", None), ("halted", "captcha")],
)
async def test_phase_and_terminal_data_shapes(
    make_service, bridge: Bridge, finish: str, halt_class: str | None
) -> None:
    svc = await make_service()
    run = bridge.open_run("r1", tenant="acme")
    run.set_phase("running")
    run.set_phase("recovering")
    run.finish(finish, halt_class=halt_class)
    events = events_of(parse_body(await get_body(svc, SSE.format(run_id="r1"))))
    assert [e.event for e in events] == ["phase"] * 4 + ["terminal"]
    phases = [e.data for e in events[:4]]
    assert [p["phase"] for p in phases] == ["queued", "running", "recovering", finish]
    for body in phases[:3]:
        assert set(body) == {"phase", "run_id", "ts"}
        assert body["run_id"] == "r1"
        datetime.fromisoformat(body["ts"])
    last = phases[3]
    if finish == "halted":
        assert set(last) == {"phase", "run_id", "ts", "halt_class"}
        assert last["halt_class"] == "captcha"
    else:
        assert set(last) == {"phase", "run_id", "ts"}
    assert events[4].data == {"phase": finish, "run_id": "r1", "halt_class": halt_class}
    assert '"halt_class":null' in events[4].raw_data.replace(" ", "") or halt_class


# -- order: replay then live ---------------------------------------------------------


async def test_replay_then_live_has_no_gap_and_no_duplicate_at_the_seam(
    make_service, bridge: Bridge, abridge: AsyncBridge
) -> None:
    """3000 rows already in the log, 600 more appended while three clients connect at
    different moments of the appending: each sees every event exactly once, in order."""
    svc = await make_service()
    run = bridge.open_run("r1", tenant="acme")
    run.set_phase("running")
    bulk_append(bridge, "r1", steps(0, 3000))
    extra = 600
    gates = {0: asyncio.Event(), 150: asyncio.Event(), 400: asyncio.Event()}

    async def appender() -> None:
        arun = abridge.run("r1")
        for i in range(extra):
            if i in gates:
                gates[i].set()
            await arun.append({"kind": "step", "step_index": 3000 + i, "type": "click"})
        await arun.finish("complete")

    async def client(gate: asyncio.Event) -> list[Event]:
        await gate.wait()
        resp = await svc.client.get(SSE.format(run_id="r1"), headers=svc.headers())
        got = await read_stream(resp, within=45)
        assert got.ended and got.clean
        return got.events

    readers = [asyncio.create_task(client(gate)) for gate in gates.values()]
    await appender()
    last_n = 2 + 3000 + extra + 2
    for events in await asyncio.gather(*readers):
        assert_contiguous(events, 1, last_n)
        indexes = [e.data["step_index"] for e in events if e.event == "step"]
        assert indexes == list(range(3000 + extra))
        assert events[-1].event == "terminal"


async def test_live_events_arrive_as_appended(
    make_service, bridge: Bridge, abridge: AsyncBridge
) -> None:
    svc = await make_service()
    bridge.open_run("r1", tenant="acme").set_phase("running")
    resp = await svc.client.get(SSE.format(run_id="r1"), headers=svc.headers())
    parser = StrictSSE()
    arun = abridge.run("r1")
    seen: list[Event] = []
    async with asyncio.timeout(10):
        stream = resp.content.iter_any()
        while len(seen) < 2:
            seen += events_of(parser.feed(await anext(stream)))
        for i in range(5):
            await arun.append({"kind": "step", "step_index": i})
            while len(seen) < 3 + i:
                seen += events_of(parser.feed(await anext(stream)))
            assert seen[-1].data["step_index"] == i
    assert_contiguous(seen, 1, 7)
    resp.close()


# -- pings, ends -----------------------------------------------------------------------


async def test_ping_comment_every_heartbeat(make_service, bridge: Bridge) -> None:
    svc = await make_service(heartbeat_s=0.2)
    bridge.open_run("r1", tenant="acme").set_phase("running")
    resp = await svc.client.get(SSE.format(run_id="r1"), headers=svc.headers())
    arrivals: list[float] = []

    def third_ping(item: object) -> bool:
        if isinstance(item, Comment):
            arrivals.append(time.monotonic())
        return len(arrivals) >= 3

    got = await read_stream(resp, stop=third_ping, within=5)
    assert [i.text for i in got.items if isinstance(i, Comment)] == ["ping"] * 3
    assert got.raw.count(b": ping\n\n") == 3
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert all(0.1 <= g <= 0.6 for g in gaps), gaps
    resp.close()


async def test_default_heartbeat_and_soft_limit_match_the_contract() -> None:
    from service.settings import Settings

    settings = Settings.from_env({})
    assert settings.heartbeat_s == 25
    assert settings.stream_max_s == 600
    assert settings.stream_maxlen == 100_000
    assert settings.retention_s == 604_800
    assert settings.client_backlog_bytes == 1_048_576
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)


async def test_server_ends_the_response_after_the_terminal_event(
    make_service, bridge: Bridge, abridge: AsyncBridge
) -> None:
    svc = await make_service()
    bridge.open_run("r1", tenant="acme").set_phase("running")
    resp = await svc.client.get(SSE.format(run_id="r1"), headers=svc.headers())
    reading = asyncio.create_task(read_stream(resp, within=10))
    arun = abridge.run("r1")
    await arun.append({"kind": "step", "step_index": 0})
    await arun.finish("complete")
    got = await reading
    assert got.ended and got.clean
    assert is_terminal(got.items[-1])
    assert [e.event for e in got.events] == ["phase", "phase", "step", "phase", "terminal"]


async def test_soft_limit_ends_at_an_event_boundary_and_resume_continues_exactly(
    make_service, bridge: Bridge, abridge: AsyncBridge
) -> None:
    limit = 1.0
    svc = await make_service(stream_max_s=limit, heartbeat_s=0.25)
    bridge.open_run("r1", tenant="acme").set_phase("running")
    enough = asyncio.Event()

    async def runner() -> None:
        arun = abridge.run("r1")
        for i in range(2000):
            if enough.is_set():
                break
            await arun.append({"kind": "step", "step_index": i, "pad": "p" * 200})
            await asyncio.sleep(0.01)  # a runner's pace, not a wait for an event
        await arun.finish("complete")

    producing = asyncio.create_task(runner())
    collected: list[Event] = []
    durations: list[float] = []
    cursor: str | None = None
    for _attempt in range(8):
        headers = svc.headers(**({"Last-Event-ID": cursor} if cursor else {}))
        started = time.monotonic()
        resp = await svc.client.get(SSE.format(run_id="r1"), headers=headers)
        assert resp.status == 200
        got = await read_stream(resp, within=limit * 3)
        elapsed = time.monotonic() - started
        assert got.ended and got.clean, "a stream must end at an event boundary"
        collected += got.events
        if got.events and is_terminal(got.items[-1]):
            break
        durations.append(elapsed)
        assert got.events, "each soft-limited stream carried events"
        cursor = got.last_id
        if len(durations) >= 3:
            enough.set()
    await producing
    assert len(durations) >= 3
    for elapsed in durations:
        assert 0.9 * limit <= elapsed <= limit + 0.4, durations
    assert is_terminal(collected[-1])
    assert_contiguous(collected, 1, collected[-1].n)


async def test_soft_limit_is_jittered_by_up_to_10_percent(make_service, bridge: Bridge) -> None:
    """Streams opened together end spread over [0.9, 1.0] x the limit, not all at once."""
    limit = 2.0
    svc = await make_service(stream_max_s=limit, heartbeat_s=0.1)
    bridge.open_run("r1", tenant="acme").set_phase("running")

    async def one() -> float:
        started = time.monotonic()
        resp = await svc.client.get(SSE.format(run_id="r1"), headers=svc.headers())
        got = await read_stream(resp, within=limit * 2)
        assert got.ended and got.clean
        return time.monotonic() - started

    durations = await asyncio.gather(*(one() for _ in range(8)))
    assert all(0.9 * limit <= d <= limit + 0.4 for d in durations), durations
    assert max(durations) - min(durations) > 0.04, f"no jitter: {durations}"


# -- slow clients ------------------------------------------------------------------------


async def test_slow_client_is_cut_others_unaffected_and_it_resumes_losing_nothing(
    make_service, bridge: Bridge, abridge: AsyncBridge
) -> None:
    backlog = 131_072
    svc = await make_service(client_backlog_bytes=backlog)
    bridge.open_run("r1", tenant="acme").set_phase("running")
    port = URL(svc.base).port
    assert port is not None
    path = SSE.format(run_id="r1")

    # The slow client: a raw socket with a tiny receive window, read only on demand.
    slow = await RawConn.get(port, path, svc.headers(), rcvbuf=4096)
    try:
        assert slow.status == 200
        dechunk, slow_parser = Dechunker(), StrictSSE()
        slow_events: list[Event] = []

        async def slow_reads_until(n: int) -> None:
            async with asyncio.timeout(10):
                while not slow_events or slow_events[-1].n < n:
                    data = await slow.recv()
                    assert data, "slow client closed early"
                    slow_events.extend(events_of(slow_parser.feed(dechunk.feed(data))))

        # The normal client, reading everything as it comes.
        resp = await svc.client.get(path, headers=svc.headers())
        normal: list[Event] = []
        progressed = asyncio.Condition()
        normal_parser = StrictSSE()

        async def normal_reader() -> bool:
            async with asyncio.timeout(40):
                async for data in resp.content.iter_any():
                    items = normal_parser.feed(data)
                    async with progressed:
                        normal.extend(events_of(items))
                        progressed.notify_all()
            return normal_parser.at_boundary

        normal_task = asyncio.create_task(normal_reader())
        arun = abridge.run("r1")
        await arun.append({"kind": "marker", "step_index": -1})
        await slow_reads_until(3)  # the slow client is live now; it stops reading here

        big = "b" * 16_000
        rows, burst = 320, 16
        for start in range(0, rows, burst):
            for i in range(start, start + burst):
                await arun.append({"kind": "step", "step_index": i, "blob": big})
            wanted = 3 + start + burst

            def caught_up(wanted: int = wanted) -> bool:
                return bool(normal) and normal[-1].n >= wanted

            async with progressed:
                await progressed.wait_for(caught_up)
        await arun.finish("complete")
        last_n = 3 + rows + 2
        assert await normal_task, "the normal client's stream ended mid-event"
        assert_contiguous(normal, 1, last_n)

        rest, how = await slow.read_to_end(within=15)
        slow_events.extend(events_of(slow_parser.feed(dechunk.feed(rest))))
        assert not dechunk.finished, "the slow client was never cut"
        assert not any(e.event == "terminal" for e in slow_events)
        assert how in ("eof", "reset")
        assert slow_events[-1].n < last_n

        cursor = slow_events[-1].id
        assert cursor is not None
        again = await svc.client.get(path, headers=svc.headers(**{"Last-Event-ID": cursor}))
        resumed = await read_stream(again, within=20)
        assert resumed.ended and resumed.clean
        assert_contiguous(slow_events + resumed.events, 1, last_n)
    finally:
        slow.close()
