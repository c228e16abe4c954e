"""CONTRACT section 3, cursors: ids, timestamps, empty, Last-Event-ID vs since, 204, gaps."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
import redis.asyncio as aredis

from runlog.calls import LogLimits
from runlog.ids import new_epoch
from runlog.keys import dedup_key, log_key, meta_key
from runner_bridge import AsyncBridge, Bridge

from .contract_support import (
    SSE,
    Event,
    Reader,
    Retry,
    assert_contiguous,
    bulk_append,
    events_of,
    has_n,
    is_terminal,
    parse_body,
    steps,
)


async def stream(
    svc: Any, run_id: str = "r1", *, since: str | None = None, **headers: str
) -> list[Any]:
    """A finished run's stream, parsed strictly (items, incl. retry and gap)."""
    path = SSE.format(run_id=run_id)
    params = {"since": since} if since is not None else None
    resp = await svc.client.get(path, params=params, headers=svc.headers(**headers))
    assert resp.status == 200, await resp.text()
    return parse_body(await resp.read())


def utc(ts: str) -> datetime:
    """A ts as an aware UTC datetime; no zone means UTC."""
    moment = datetime.fromisoformat(ts)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def event_times(events: list[Event]) -> list[datetime]:
    """Each event's ts; the terminal event shares its phase record's."""
    times: list[datetime] = []
    for event in events:
        times.append(utc(event.data["ts"]) if "ts" in event.data else times[-1])
    return times


def published_run(bridge: Bridge, rows: list[dict[str, Any]], run_id: str = "r1") -> list[str]:
    run = bridge.open_run(run_id, tenant="acme")
    ids = [run.set_phase("running")]
    ids += [run.append(row) for row in rows]
    ids.append(run.finish("complete"))
    return ids


# -- id cursors ------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["last-event-id", "since"])
async def test_id_cursor_resumes_exactly_after_it(make_service, bridge: Bridge, how: str) -> None:
    svc = await make_service()
    published_run(bridge, steps(0, 10))
    everything = events_of(await stream(svc))
    cursor = everything[5].id
    assert cursor is not None
    if how == "since":
        items = await stream(svc, since=cursor)
    else:
        items = await stream(svc, **{"Last-Event-ID": cursor})
    assert items[0] == Retry(2000)
    assert events_of(items) == everything[6:]


async def test_two_rows_in_the_same_second_resume_by_id_without_skipping(
    make_service, bridge: Bridge
) -> None:
    """The original API used the row's second-resolution ts as the id and lost rows."""
    svc = await make_service()
    same = "2026-06-08T00:00:01"
    rows = [
        {"ts": same, "kind": "step", "step_index": 1},
        {"ts": same, "kind": "step", "step_index": 2},
        {"ts": same, "kind": "step", "step_index": 3},
    ]
    ids = published_run(bridge, rows)
    first_row_id = ids[1]
    events = events_of(await stream(svc, **{"Last-Event-ID": first_row_id}))
    assert [e.data.get("step_index") for e in events if e.event == "step"] == [2, 3]
    assert events[0].data["step_index"] == 2


async def test_last_event_id_wins_over_since(make_service, bridge: Bridge) -> None:
    svc = await make_service()
    published_run(bridge, steps(0, 6))
    everything = events_of(await stream(svc))
    newer, older = everything[4].id, everything[1].id
    assert newer and older
    got = events_of(await stream(svc, since=older, **{"Last-Event-ID": newer}))
    assert got == everything[5:]
    # since is not even read when Last-Event-ID is there.
    got = events_of(await stream(svc, since="not-a-cursor", **{"Last-Event-ID": newer}))
    assert got == everything[5:]
    resp = await svc.client.get(
        SSE.format(run_id="r1"), params={"since": newer},
        headers=svc.headers(**{"Last-Event-ID": "not-a-cursor"}),
    )
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "invalid_cursor"


@pytest.mark.parametrize("how", ["absent", "since-empty", "last-event-id-empty"])
async def test_empty_cursor_starts_from_the_beginning(
    make_service, bridge: Bridge, how: str
) -> None:
    svc = await make_service()
    published_run(bridge, steps(0, 4))
    if how == "absent":
        items = await stream(svc)
    elif how == "since-empty":
        items = await stream(svc, since="")
    else:
        items = await stream(svc, **{"Last-Event-ID": ""})
    events = events_of(items)
    assert_contiguous(events, 1, 8)
    assert events[0].data["phase"] == "queued"


# -- timestamp cursors -------------------------------------------------------------------


TS_ROWS = [
    {"ts": "2026-06-08T00:00:01.000Z", "kind": "step", "step_index": 1},
    {"ts": "2026-06-08T00:00:02", "kind": "step", "step_index": 2},
    {"ts": "2026-06-08T00:00:02.000001Z", "kind": "step", "step_index": 3},
    {"ts": "2026-06-08T00:00:02.500+00:00", "kind": "step", "step_index": 4},
    {"ts": "2026-06-08T02:00:03+02:00", "kind": "step", "step_index": 5},
]


@pytest.mark.parametrize(
    "cursor",
    [
        "2026-06-08T00:00:02",  # no zone: UTC
        "2026-06-08T00:00:02Z",
        "2026-06-08T00:00:02.000Z",
        "2026-06-08T00:00:02+00:00",
        "2026-06-08T03:00:02+03:00",
    ],
)
async def test_timestamp_cursor_skips_events_at_or_before_it(
    make_service, bridge: Bridge, cursor: str
) -> None:
    svc = await make_service()
    published_run(bridge, TS_ROWS)
    everything = events_of(await stream(svc))
    got = events_of(await stream(svc, since=cursor))
    assert [e.data["step_index"] for e in got if e.event == "step"] == [3, 4, 5]
    # Phase records carry now-ish timestamps, later than the cursor: they stay.
    limit = datetime(2026, 6, 8, 0, 0, 2, tzinfo=UTC)
    expected = [
        e for e, t in zip(everything, event_times(everything), strict=True) if t > limit
    ]
    assert got == expected
    # And it works as Last-Event-ID too (a client may only have a timestamp).
    assert events_of(await stream(svc, **{"Last-Event-ID": cursor})) == expected


def next_wall_millisecond() -> None:
    """Busy-wait (well under a millisecond) until the wall clock's millisecond changes."""
    start = time.time_ns() // 1_000_000
    for _ in range(10_000_000):
        if time.time_ns() // 1_000_000 != start:
            return
    raise AssertionError("the wall clock did not move")


async def test_timestamp_cursor_equal_to_a_stamped_ts_skips_that_event(
    make_service, bridge: Bridge
) -> None:
    """Rows without ts get one stamped by the bridge; using that very ts as a cursor must
    skip the row ("at or before"), else a client resuming by ts sees it twice."""
    svc = await make_service()
    run = bridge.open_run("r1", tenant="acme")
    run.set_phase("running")
    for i in range(3):
        run.append({"kind": "step", "step_index": i})
        next_wall_millisecond()  # each row in its own millisecond
    run.finish("complete")
    everything = events_of(await stream(svc))
    row = next(e for e in everything if e.event == "step" and e.data["step_index"] == 1)
    cursor = row.data["ts"]
    got = events_of(await stream(svc, since=cursor))
    assert row not in got, f"the event whose ts is {cursor} came back"
    expected = [
        e for e, t in zip(everything, event_times(everything), strict=True) if t > utc(cursor)
    ]
    assert got == expected
    assert [e.data["step_index"] for e in got if e.event == "step"] == [2]


# -- 204 -----------------------------------------------------------------------------------


async def test_id_cursor_at_the_terminal_event_gets_204(make_service, bridge: Bridge) -> None:
    svc = await make_service()
    ids = published_run(bridge, steps(0, 2))
    terminal_id = ids[-1]
    for headers, params in (({"Last-Event-ID": terminal_id}, None), ({}, {"since": terminal_id})):
        resp = await svc.client.get(
            SSE.format(run_id="r1"), params=params, headers=svc.headers(**headers)
        )
        assert resp.status == 204
        assert await resp.read() == b""
    # One before the terminal event still gets the terminal event, then the end.
    everything = events_of(await stream(svc))
    before = everything[-2].id
    assert before
    assert [e.event for e in events_of(await stream(svc, **{"Last-Event-ID": before}))] == [
        "terminal"
    ]


@pytest.mark.parametrize("later", [False, True])
async def test_timestamp_cursor_at_or_after_the_terminal_event_gets_204(
    make_service, bridge: Bridge, later: bool
) -> None:
    svc = await make_service()
    published_run(bridge, steps(0, 2))
    everything = events_of(await stream(svc))
    final_phase = everything[-2]
    assert final_phase.event == "phase" and final_phase.data["phase"] == "complete"
    cursor = "2099-01-01T00:00:00Z" if later else final_phase.data["ts"]
    resp = await svc.client.get(
        SSE.format(run_id="r1"), headers=svc.headers(**{"Last-Event-ID": cursor})
    )
    assert resp.status == 204, f"cursor {cursor}: got {resp.status} {(await resp.read())[:300]!r}"


# -- gaps --------------------------------------------------------------------------------------


def first_retained_n(client: Any, run_id: str) -> int:
    first = client.xrange(log_key(run_id), "-", "+", count=1)
    return int(first[0][0].split(b"-")[0])


def trimmed_run(bridge: Bridge, run_id: str = "r1", total: int = 1000) -> tuple[list[str], int]:
    """A finished run whose log kept only its tail (MAXLEN ~ 100); returns early ids and
    the first retained event number."""
    small = Bridge(bridge.client, limits=LogLimits(maxlen=100))
    run = small.open_run(run_id, tenant="acme")
    early = [run.set_phase("running")]
    early += [run.append(row) for row in steps(0, 5)]
    bulk_append(small, run_id, steps(5, total))
    run.finish("complete")
    first_n = first_retained_n(bridge.client, run_id)
    assert first_n > 10, "the log was not trimmed; the test needs a trimmed log"
    return early, first_n


def check_gap(items: list[Any], run_id: str, after: str, resumed_from: str) -> list[Event]:
    assert items[0] == Retry(2000)
    gap = items[1]
    assert isinstance(gap, Event) and gap.event == "gap"
    assert gap.id is None, "the gap event must carry no id line"
    assert gap.data == {"run_id": run_id, "after": after, "resumed_from": resumed_from}
    rest = events_of(items[2:])
    assert all(e.event != "gap" for e in rest)
    return rest


async def test_gap_for_an_id_cursor_older_than_the_retained_log(
    make_service, bridge: Bridge
) -> None:
    svc = await make_service()
    early, first_n = trimmed_run(bridge)
    epoch = early[0].split("-")[0]
    first_id = f"{epoch}-{first_n:010d}"
    cursor = early[3]
    items = await stream(svc, **{"Last-Event-ID": cursor})
    rest = check_gap(items, "r1", cursor, first_id)
    assert rest[0].id == first_id
    assert_contiguous(rest, first_n, 2 + 1000 + 2)
    assert is_terminal(rest[-1])
    # The raw bytes of the gap block have no id line at all.
    resp = await svc.client.get(
        SSE.format(run_id="r1"), headers=svc.headers(**{"Last-Event-ID": cursor})
    )
    raw = await resp.read()
    gap_block = raw.split(b"\n\n")[1]
    assert gap_block.startswith(b"event: gap\n") and b"id:" not in gap_block


async def test_gap_for_a_cursor_just_before_the_retained_log_is_not_needed(
    make_service, bridge: Bridge
) -> None:
    svc = await make_service()
    early, first_n = trimmed_run(bridge)
    epoch = early[0].split("-")[0]
    cursor = f"{epoch}-{first_n - 1:010d}"  # the client has everything before the first kept
    events = events_of(await stream(svc, **{"Last-Event-ID": cursor}))
    assert all(e.event != "gap" for e in events)
    assert_contiguous(events, first_n, 2 + 1000 + 2)


async def test_gap_for_an_empty_cursor_on_a_trimmed_log(make_service, bridge: Bridge) -> None:
    """From the start, but the start is gone: say so rather than hide it."""
    svc = await make_service()
    early, first_n = trimmed_run(bridge)
    epoch = early[0].split("-")[0]
    items = await stream(svc)
    gap = items[1]
    assert isinstance(gap, Event) and gap.event == "gap" and gap.id is None
    assert gap.data["resumed_from"] == f"{epoch}-{first_n:010d}"
    assert gap.data["run_id"] == "r1"
    assert_contiguous(events_of(items[2:]), first_n, 2 + 1000 + 2)


async def test_gap_for_a_timestamp_cursor_older_than_the_retained_log(
    make_service, bridge: Bridge
) -> None:
    svc = await make_service()
    early, first_n = trimmed_run(bridge)
    epoch = early[0].split("-")[0]
    cursor = "2020-01-01T00:00:00Z"
    items = await stream(svc, since=cursor)
    rest = check_gap(items, "r1", cursor, f"{epoch}-{first_n:010d}")
    assert_contiguous(rest, first_n, 2 + 1000 + 2)


async def next_millisecond(epoch: str) -> None:
    """Ids name their log incarnation by the millisecond it was created: move past it."""
    async with asyncio.timeout(1):
        while new_epoch() == epoch:  # noqa: ASYNC110 - waiting on the wall clock itself
            await asyncio.sleep(0.001)


def lose_log(store: redis.Redis, run_id: str) -> None:
    """The store lost the run (failover without persistence, eviction, flush)."""
    store.delete(meta_key(run_id), log_key(run_id), dedup_key(run_id))


async def test_gap_for_a_cursor_from_a_lost_and_recreated_log(
    make_service, bridge: Bridge, store_url: str
) -> None:
    svc = await make_service()
    old = published_run(bridge, steps(0, 8))
    old_epoch = old[0].split("-")[0]
    cursor = old[4]
    store = redis.Redis.from_url(store_url)
    lose_log(store, "r1")
    store.close()
    await next_millisecond(old_epoch)
    new = published_run(bridge, steps(100, 103))
    new_epoch_ = new[0].split("-")[0]
    assert new_epoch_ != old_epoch
    items = await stream(svc, **{"Last-Event-ID": cursor})
    rest = check_gap(items, "r1", cursor, f"{new_epoch_}-{1:010d}")
    assert_contiguous(rest, 1, 2 + 3 + 2)
    assert all(e.id and e.id.startswith(new_epoch_ + "-") for e in rest)
    assert [e.data["step_index"] for e in rest if e.event == "step"] == [100, 101, 102]


async def test_live_stream_of_a_lost_and_recreated_log_ends_then_resumes_with_a_gap(
    make_service, bridge: Bridge, abridge: AsyncBridge, store_url: str
) -> None:
    svc = await make_service()
    run = bridge.open_run("r1", tenant="acme")
    run.set_phase("running")
    run.append({"kind": "step", "step_index": 0})
    resp = await svc.client.get(SSE.format(run_id="r1"), headers=svc.headers())
    reader = Reader(resp)
    await reader.until(has_n(3))
    await abridge.run("r1").append({"kind": "step", "step_index": 1})
    await reader.until(has_n(4))  # live now
    store = aredis.Redis.from_url(store_url)
    raw_epoch = await store.hget(meta_key("r1"), "epoch")
    assert isinstance(raw_epoch, bytes)
    old_epoch = raw_epoch.decode()
    await store.delete(meta_key("r1"), log_key("r1"), dedup_key("r1"))
    await store.aclose()
    await next_millisecond(old_epoch)
    reopened = await abridge.open_run("r1", tenant="acme")
    await reopened.set_phase("running")
    await reader.to_end(within=10)
    assert reader.ended and reader.clean
    assert_contiguous(reader.events, 1, 4)
    cursor = reader.events[-1].id
    assert cursor is not None and cursor.startswith(old_epoch)
    await reopened.finish("complete")
    items = await stream(svc, **{"Last-Event-ID": cursor})
    new = items[2].id if isinstance(items[2], Event) else None
    assert new is not None and not new.startswith(old_epoch)
    rest = check_gap(items, "r1", cursor, new)
    assert [e.event for e in rest] == ["phase", "phase", "phase", "terminal"]
    assert_contiguous(rest, 1, 4)
