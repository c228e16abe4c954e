"""CONTRACT section 3, the JSON page: shape, limits, paging with next_cursor, done."""

from __future__ import annotations

from typing import Any

import pytest

from runlog.calls import LogLimits
from runner_bridge import AsyncBridge, Bridge

from .conftest import fixture_path
from .contract_support import (
    PAGE,
    SSE,
    bulk_append,
    events_of,
    parse_body,
    publish_jsonl,
    steps,
)

PAGE_KEYS = {"run_id", "phase", "events", "next_cursor", "done"}


async def get_page(svc: Any, run_id: str = "r1", **params: Any) -> dict[str, Any]:
    resp = await svc.client.get(
        PAGE.format(run_id=run_id), params={k: str(v) for k, v in params.items()},
        headers=svc.headers(),
    )
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("application/json")
    page: dict[str, Any] = await resp.json()
    return page


def big_run(bridge: Bridge, rows: int, run_id: str = "r1", finish: bool = True) -> int:
    """A run with ``rows`` steps; returns its last event number."""
    run = bridge.open_run(run_id, tenant="acme")
    run.set_phase("running")
    bulk_append(bridge, run_id, steps(0, rows))
    if finish:
        run.finish("complete")
        return rows + 4
    return rows + 2


async def test_page_shape_and_data_equal_to_the_stream(make_service, bridge: Bridge) -> None:
    svc = await make_service()
    publish_jsonl(bridge, fixture_path("reasoning-tricky.jsonl"), "r1")
    page = await get_page(svc)
    assert set(page) == PAGE_KEYS
    assert page["run_id"] == "r1"
    assert page["phase"] == "complete"
    assert page["done"] is True
    for event in page["events"]:
        assert set(event) == {"event", "id", "data"}
    resp = await svc.client.get(SSE.format(run_id="r1"), headers=svc.headers())
    streamed = events_of(parse_body(await resp.read()))
    assert [(e["event"], e["id"], e["data"]) for e in page["events"]] == [
        (e.event, e.id, e.data) for e in streamed
    ]
    assert page["next_cursor"] == streamed[-1].id


async def test_page_default_limit_is_1000(make_service, bridge: Bridge) -> None:
    svc = await make_service()
    big_run(bridge, 1500)
    page = await get_page(svc)
    assert len(page["events"]) == 1000
    assert page["done"] is False
    assert page["phase"] == "complete"
    assert page["next_cursor"] == page["events"][-1]["id"]


async def test_page_explicit_limit(make_service, bridge: Bridge) -> None:
    svc = await make_service()
    big_run(bridge, 50)
    page = await get_page(svc, limit=7)
    assert len(page["events"]) == 7
    assert page["done"] is False
    assert [e["event"] for e in page["events"][:2]] == ["phase", "phase"]


# Filling 10000+ events into the embedded store takes seconds; the bound is the service's
# own logic, and both stores are covered by the default and explicit limit tests.
@pytest.mark.parametrize("store_url", ["redis"], indirect=True)
async def test_page_limit_at_most_10000(make_service, bridge: Bridge) -> None:
    svc = await make_service()
    big_run(bridge, 10_050)
    page = await get_page(svc, limit=10_000)
    assert len(page["events"]) == 10_000
    assert page["done"] is False
    ids = [e["id"] for e in page["events"]]
    assert ids == sorted(ids) and len(set(ids)) == 10_000
    # Above the bound: never more than 10000 events (today the service refuses it).
    resp = await svc.client.get(
        PAGE.format(run_id="r1"), params={"limit": "10001"}, headers=svc.headers()
    )
    if resp.status == 200:
        assert len((await resp.json())["events"]) <= 10_000
    else:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "invalid_limit"


@pytest.mark.parametrize("limit", ["0", "-1", "abc", "1.5"])
async def test_page_nonsense_limit_is_a_clear_400(make_service, bridge: Bridge, limit: str) -> None:
    svc = await make_service()
    big_run(bridge, 3)
    resp = await svc.client.get(
        PAGE.format(run_id="r1"), params={"limit": limit}, headers=svc.headers()
    )
    assert resp.status == 400
    body = await resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}


async def test_paging_with_next_cursor_reaches_done(make_service, bridge: Bridge) -> None:
    svc = await make_service()
    last_n = big_run(bridge, 45)
    seen: list[dict[str, Any]] = []
    cursor = ""
    for _ in range(20):
        page = await get_page(svc, since=cursor, limit=7)
        assert len(page["events"]) <= 7
        seen += page["events"]
        cursor = page["next_cursor"]
        if page["done"]:
            break
    else:
        pytest.fail("paging never reached done=true")
    assert seen[-1]["event"] == "terminal"
    numbers = [int(e["id"].rsplit("-", 1)[1]) for e in seen]
    assert numbers == list(range(1, last_n + 1))
    # A page after the end: nothing more, still done.
    after = await get_page(svc, since=cursor)
    assert after["events"] == [] and after["done"] is True


async def test_page_of_a_live_run_polls_with_next_cursor(
    make_service, bridge: Bridge, abridge: AsyncBridge
) -> None:
    svc = await make_service()
    big_run(bridge, 3, finish=False)
    first = await get_page(svc)
    assert first["phase"] == "running" and first["done"] is False
    assert len(first["events"]) == 5
    idle = await get_page(svc, since=first["next_cursor"])
    assert idle["events"] == [] and idle["done"] is False
    assert idle["next_cursor"] == first["next_cursor"]
    arun = abridge.run("r1")
    await arun.append({"kind": "step", "step_index": 3})
    await arun.finish("halted", halt_class="captcha")
    rest = await get_page(svc, since=idle["next_cursor"])
    assert [e["event"] for e in rest["events"]] == ["step", "phase", "terminal"]
    terminal = {"phase": "halted", "run_id": "r1", "halt_class": "captcha"}
    assert rest["events"][-1]["data"] == terminal
    assert rest["done"] is True and rest["phase"] == "halted"


async def test_page_with_a_gap_lists_the_gap_first(make_service, bridge: Bridge) -> None:
    svc = await make_service()
    small = Bridge(bridge.client, limits=LogLimits(maxlen=100))
    run = small.open_run("r1", tenant="acme")
    old = run.set_phase("running")
    bulk_append(small, "r1", steps(0, 1000))
    run.finish("complete")
    page = await get_page(svc, since=old, limit=10_000)
    gap = page["events"][0]
    assert gap["event"] == "gap" and gap["id"] is None
    rest = page["events"][1:]
    assert gap["data"] == {"run_id": "r1", "after": old, "resumed_from": rest[0]["id"]}
    assert int(rest[0]["id"].rsplit("-", 1)[1]) > 10
    assert page["done"] is True


async def test_page_with_a_timestamp_cursor(make_service, bridge: Bridge) -> None:
    svc = await make_service()
    run = bridge.open_run("r1", tenant="acme")
    for i in range(5):
        run.append({"ts": f"2026-06-08T00:00:0{i}Z", "kind": "step", "step_index": i})
    page = await get_page(svc, since="2026-06-08T00:00:02")
    # The queued phase record is stamped now, after the cursor, so it stays.
    assert [e["data"].get("step_index") for e in page["events"]] == [None, 3, 4]
    assert page["events"][0]["event"] == "phase"
    assert page["next_cursor"] == page["events"][-1]["id"]
