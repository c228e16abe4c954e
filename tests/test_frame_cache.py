"""The pod's frame cache: contiguous ranges, terminal, epochs, byte bound; and replays that
use it give every client exactly its events."""

from __future__ import annotations

import asyncio

from runner_bridge import Bridge
from service.frame_cache import FrameCache

from .contract_support import bulk_append


def frame(n: int) -> bytes:
    return b"event: step\nid: e-%010d\ndata: {}\n\n" % n


def test_take_returns_contiguous_frames_and_stops_at_a_hole() -> None:
    cache = FrameCache(1 << 20)
    for n in (1, 2, 3, 5):
        cache.put("r", "ep", n, frame(n), terminal=False)
    got = cache.take("r", "ep", 0, 10)
    assert got is not None and got.last_n == 3 and not got.terminal
    assert got.payload == frame(1) + frame(2) + frame(3)
    assert cache.take("r", "ep", 3, 10) is None  # event 4 is not cached
    limited = cache.take("r", "ep", 0, 2)
    assert limited is not None and limited.last_n == 2


def test_terminal_ends_a_range_and_other_epochs_miss() -> None:
    cache = FrameCache(1 << 20)
    cache.put("r", "ep", 1, frame(1), terminal=False)
    cache.put("r", "ep", 2, frame(2), terminal=True)
    got = cache.take("r", "ep", 0, 10)
    assert got is not None and got.terminal and got.last_n == 2
    assert cache.take("r", "other", 0, 10) is None
    cache.put("r", "new", 1, frame(1), terminal=False)  # a re-created log replaces the old
    assert cache.take("r", "ep", 0, 10) is None


def test_byte_bound_evicts_least_recently_used_runs() -> None:
    cache = FrameCache(3_000)
    for run in ("a", "b", "c"):
        for n in range(1, 11):
            cache.put(run, "ep", n, frame(n), terminal=False)
    assert cache.nbytes <= 3_000
    assert cache.take("c", "ep", 0, 10) is not None
    assert cache.take("a", "ep", 0, 10) is None


async def test_many_clients_resuming_at_spread_cursors_get_exactly_their_events(
    make_service, bridge: Bridge
) -> None:
    svc = await make_service()
    run = bridge.open_run("storm", tenant="acme")
    run.set_phase("running")
    bulk_append(bridge, "storm", [{"kind": "step", "i": i} for i in range(1200)])
    run.finish("complete")
    page = await (
        await svc.client.get("/v1/runs/storm/events?limit=10000", headers=svc.headers())
    ).json()
    ids = [e["id"] for e in page["events"]]
    assert len(ids) == 1204

    async def resume(start: int) -> list[str]:
        headers = svc.headers(**{"Last-Event-ID": ids[start]})
        resp = await svc.client.get("/v1/runs/storm/events?sse=true", headers=headers)
        body = (await resp.read()).decode()
        return [line[4:] for line in body.splitlines() if line.startswith("id: ")]

    starts = list(range(0, 1203, 37))
    results = await asyncio.gather(*(resume(s) for s in starts))
    for start, got in zip(starts, results, strict=True):
        assert got == ids[start + 1 :]
