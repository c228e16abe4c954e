"""Faults at the replay/live seam and in what the hub hears, made to happen on purpose.

Each test injects the fault at the exact moment it matters (a wrapped log read, a PUBLISH
from outside, a trim between two reads) instead of hoping a race comes up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
import redis.asyncio as aredis

from runlog.calls import LogLimits
from runlog.ids import format_event_id
from runlog.keys import live_channel, log_key
from runner_bridge import AsyncBridge, Bridge
from service.app import create_app
from service.appkeys import HUB, READER
from service.auth import TokenTable
from service.settings import Settings
from service.store import Entry

from .conftest import TOKEN_SPEC, TOKENS, Service
from .contract_support import PAGE, SSE, Reader, assert_contiguous, bulk_append, read_stream


@pytest.fixture
def service(aiohttp_client, redis_url: str) -> Callable[..., Awaitable[Service]]:
    """The app in-process over the real redis-server only, with settings overrides."""

    async def start(**overrides: Any) -> Service:
        settings = Settings(tenant_tokens=TOKEN_SPEC, redis_url=redis_url, **overrides)
        app = create_app(settings, TokenTable.parse(TOKEN_SPEC), redis_url)
        client = await aiohttp_client(app, server_kwargs={"host": "127.0.0.1"})
        return Service(base=str(client.make_url("")).rstrip("/"), client=client, settings=settings)

    return start


def stream_headers(**extra: str) -> dict[str, str]:
    return {"X-Mantis-Token": TOKENS["acme"], **extra}


async def until(condition: Callable[[], bool], what: str, rounds: int = 500) -> None:
    """Wait (bounded) for something that crosses a real socket."""
    for _ in range(rounds):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def test_an_announcement_during_the_last_replay_read_reaches_the_client(
    service, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The feed moves past the cursor while the (empty) catch-up read is in flight."""
    svc = await service()
    app = svc.client.server.app
    reader, hub = app[READER], app[HUB]
    async with AsyncBridge.from_url(redis_url, limits=LogLimits()) as bridge:
        run = await bridge.open_run("seam", tenant="acme")
        await run.set_phase("running")
        for i in range(3):
            await run.append({"kind": "step", "step_index": i})
        state = await reader.state("seam")
        assert state is not None
        last = state.last_n
        real_after = reader.after
        injected = asyncio.Event()

        async def after(run_id: str, after_n: int, count: int) -> list[Entry]:
            entries = await real_after(run_id, after_n, count)
            if run_id == "seam" and not entries and not injected.is_set():
                # The read missed them; their announcements arrive before replay resumes.
                injected.set()
                await run.finish("complete")
                feed = hub._feeds[live_channel("seam").encode()]
                await until(lambda: feed.last_n >= last + 2, "the announcements")
            return entries

        monkeypatch.setattr(reader, "after", after)
        resp = await svc.client.get(
            SSE.format(run_id="seam"),
            headers=stream_headers(**{"Last-Event-ID": format_event_id(state.epoch, last)}),
        )
        assert resp.status == 200
        got = await read_stream(resp, within=5)
    assert injected.is_set()
    assert [e.event for e in got.events] == ["phase", "terminal"]
    assert_contiguous(got.events, last + 1, last + 2)
    assert got.ended and got.clean


async def test_a_log_trimmed_during_a_slow_replay_gets_a_gap_event(
    service, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events trimmed between two replay reads are announced by a gap, never skipped."""
    svc = await service()
    reader = svc.client.server.app[READER]
    with Bridge.from_url(redis_url, limits=LogLimits()) as bridge:
        run = bridge.open_run("trim", tenant="acme")
        run.set_phase("running")
        bulk_append(bridge, "trim", [{"kind": "step", "step_index": i} for i in range(1200)])
        run.finish("complete")
    state = await reader.state("trim")
    assert state is not None
    real_after = reader.after
    reads: list[int] = []
    store = aredis.Redis.from_url(redis_url)
    trimmed_to: list[int] = []

    async def after(run_id: str, after_n: int, count: int) -> list[Entry]:
        reads.append(after_n)
        if len(reads) == 2:
            # The cap pushed the oldest events out while the client read the first batch.
            trimmed_to.append(after_n + 50)
            await store.xtrim(log_key("trim"), minid=f"{after_n + 50}-0", approximate=False)
        return await real_after(run_id, after_n, count)

    monkeypatch.setattr(reader, "after", after)
    try:
        resp = await svc.client.get(SSE.format(run_id="trim"), headers=stream_headers())
        got = await read_stream(resp, within=15)
    finally:
        await store.aclose()
    assert got.ended and trimmed_to
    names = [e.event for e in got.events]
    assert names.count("gap") == 1
    at = names.index("gap")
    gap = got.events[at]
    before, after_gap = got.events[:at], got.events[at + 1 :]
    assert gap.id is None
    assert gap.data == {
        "run_id": "trim",
        "after": before[-1].id,
        "resumed_from": format_event_id(state.epoch, trimmed_to[0]),
    }
    assert_contiguous(before, 1, trimmed_to[0] - 50)
    assert_contiguous(after_gap, trimmed_to[0], state.last_n)


async def test_a_malformed_announcement_is_dropped_without_resetting_the_connection(
    service, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    svc = await service()
    hub = svc.client.server.app[HUB]
    store = aredis.Redis.from_url(redis_url)
    async with AsyncBridge.from_url(redis_url, limits=LogLimits()) as bridge:
        run = await bridge.open_run("noise", tenant="acme")
        await run.set_phase("running")
        resp = await svc.client.get(SSE.format(run_id="noise"), headers=stream_headers())
        reader = Reader(resp)
        await reader.until(lambda r: len(r.events) >= 2)
        connection = hub._live
        assert connection is not None
        channel = live_channel("noise")
        with caplog.at_level(logging.WARNING, logger="mantis.hub"):
            for junk in (b"garbage", b"x:y:z:w", b"", b"12"):
                await store.publish(channel, junk)
            await run.append({"kind": "step", "step_index": 7})
            await reader.until(lambda r: any(e.event == "step" for e in r.events), within=5)
        await store.aclose()
    assert not reader.ended, "the stream was ended by the noise"
    assert [e.data.get("step_index") for e in reader.events if e.event == "step"] == [7]
    assert hub._live is connection, "the pub/sub connection was reset"
    dropped = [r for r in caplog.records if "malformed announcement" in r.getMessage()]
    assert len(dropped) == 4
    resp.close()


async def page_through(svc: Service, run_id: str, budget: int) -> tuple[list[Any], list[int]]:
    """Every event of a run, page by page; checks each page against the byte budget."""
    events: list[dict[str, Any]] = []
    cursor = ""
    sizes: list[int] = []
    for _ in range(20):  # bounded paging
        resp = await svc.client.get(
            PAGE.format(run_id=run_id), params={"since": cursor}, headers=stream_headers()
        )
        assert resp.status == 200
        page = await resp.json()
        assert page["events"], "a page always holds at least one event"
        sizes.append(len(page["events"]))
        data_bytes = sum(len(orjson.dumps(e["data"])) for e in page["events"])
        assert len(page["events"]) == 1 or data_bytes <= budget
        events += page["events"]
        cursor = page["next_cursor"]
        if page["done"]:
            break
    return events, sizes


async def test_a_json_page_stops_at_8_mib_of_event_data(service, redis_url: str) -> None:
    svc = await service()
    pad = "x" * 900_000
    with Bridge.from_url(redis_url, limits=LogLimits()) as bridge:
        run = bridge.open_run("big", tenant="acme")
        run.set_phase("running")
        for i in range(12):
            run.append({"kind": "step", "step_index": i, "pad": pad})
        run.finish("complete")
    events, sizes = await page_through(svc, "big", 8 * 1024 * 1024)
    assert [e["data"]["step_index"] for e in events if e["event"] == "step"] == list(range(12))
    assert events[-1]["event"] == "terminal"
    assert len(sizes) >= 2, "one page held all 10 MB"


async def test_a_json_page_over_a_small_budget_still_holds_one_event(
    service, redis_url: str
) -> None:
    svc = await service(page_max_bytes=250_000)
    pad = "x" * 100_000
    with Bridge.from_url(redis_url, limits=LogLimits()) as bridge:
        run = bridge.open_run("big", tenant="acme")
        run.set_phase("running")
        for i in range(6):
            run.append({"kind": "step", "step_index": i, "pad": pad})
        run.append({"kind": "step", "step_index": 6, "pad": pad * 3})  # alone over budget
        run.finish("complete")
    events, sizes = await page_through(svc, "big", 250_000)
    steps = [e["data"]["step_index"] for e in events if e["event"] == "step"]
    assert steps == list(range(7))
    assert events[-1]["event"] == "terminal"
    assert max(sizes) < len(events), "one page held everything"


async def test_replay_reads_follow_the_batch_byte_budget(
    service, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = await service()  # the default budget: 1 MiB per read
    reader = svc.client.server.app[READER]
    pad = "y" * 20_000
    with Bridge.from_url(redis_url, limits=LogLimits()) as bridge:
        run = bridge.open_run("wide", tenant="acme")
        run.set_phase("running")
        bulk_append(bridge, "wide", [{"kind": "step", "i": i, "pad": pad} for i in range(120)])
        # 2.4 MB in all: more than one budget's worth
        run.finish("complete")
    real_after = reader.after
    read_bytes: list[int] = []

    async def after(run_id: str, after_n: int, count: int) -> list[Entry]:
        entries = await real_after(run_id, after_n, count)
        read_bytes.append(sum(len(e.data) for e in entries))
        return entries

    monkeypatch.setattr(reader, "after", after)
    resp = await svc.client.get(SSE.format(run_id="wide"), headers=stream_headers())
    got = await read_stream(resp, within=15)
    assert got.ended and got.events[-1].event == "terminal"
    assert [e.data["i"] for e in got.events if e.event == "step"] == list(range(120))
    assert len(read_bytes) > 2
    # The first read knows nothing of the sizes; every later one fits the budget.
    assert max(read_bytes[1:]) <= 1024 * 1024, read_bytes
