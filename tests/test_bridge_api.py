"""The runner_bridge Python API (CONTRACT section 1-2), sync and asyncio, on both stores."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
import redis

from runlog.keys import log_key, meta_key
from runner_bridge import (
    AsyncBridge,
    Bridge,
    InvalidPhase,
    InvalidPhaseMove,
    InvalidRow,
    RunNotFound,
    RunTerminal,
    TenantMismatch,
)

STAMP_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3,6}(Z|\+00:00)")


def read_log(url: str, run_id: str) -> list[tuple[str, str, dict[str, Any], int]]:
    """The run's log as (event id number, event name, data, t in microseconds)."""
    client = redis.Redis.from_url(url)
    try:
        entries = client.xrange(log_key(run_id))
    finally:
        client.close()
    return [
        (entry_id.decode(), f[b"e"].decode(), orjson.loads(f[b"d"]), int(f[b"t"]))
        for entry_id, f in entries
    ]


def read_meta(url: str, run_id: str) -> dict[str, str]:
    client = redis.Redis.from_url(url)
    try:
        raw = client.hgetall(meta_key(run_id))
    finally:
        client.close()
    return {k.decode(): v.decode() for k, v in raw.items()}


def names(url: str, run_id: str) -> list[str]:
    return [name for _id, name, _data, _t in read_log(url, run_id)]


def utc_us(text: str) -> int:
    moment = datetime.fromisoformat(text).replace(tzinfo=UTC)
    return int(moment.timestamp() * 1_000_000)


# --- sync Bridge ---------------------------------------------------------------------


def test_open_run_creates_queued_once(bridge: Bridge, store_url: str) -> None:
    first = bridge.open_run("r1", tenant="acme")
    first.set_phase("running")
    again = bridge.open_run("r1", tenant="acme")
    assert (first.phase_at_open, again.phase_at_open) == ("queued", "running")
    assert names(store_url, "r1") == ["phase", "phase"]
    meta = read_meta(store_url, "r1")
    assert (meta["tenant"], meta["phase"]) == ("acme", "running")


def test_open_run_of_another_tenant_is_refused(bridge: Bridge, store_url: str) -> None:
    bridge.open_run("r1", tenant="acme")
    with pytest.raises(TenantMismatch, match="another tenant"):
        bridge.open_run("r1", tenant="other")
    assert names(store_url, "r1") == ["phase"]
    assert read_meta(store_url, "r1")["tenant"] == "acme"


def test_valid_moves_each_write_one_phase_record(bridge: Bridge, store_url: str) -> None:
    run = bridge.open_run("r1", tenant="acme")
    for phase in ("running", "recovering", "running"):
        run.set_phase(phase)
    log = read_log(store_url, "r1")
    assert [data["phase"] for _id, _name, data, _t in log] == [
        "queued", "running", "recovering", "running",
    ]
    assert all(data["run_id"] == "r1" and "ts" in data for _id, _n, data, _t in log)
    assert read_meta(store_url, "r1")["phase"] == "running"


@pytest.mark.parametrize(
    ("path", "refused"),
    [
        ((), "complete"),
        ((), "recovering"),
        (("running",), "queued"),
        (("running", "recovering"), "queued"),
    ],
)
def test_invalid_move_is_refused_and_writes_nothing(
    bridge: Bridge, store_url: str, path: tuple[str, ...], refused: str
) -> None:
    run = bridge.open_run("r1", tenant="acme")
    for phase in path:
        run.set_phase(phase)
    before_log, before_meta = read_log(store_url, "r1"), read_meta(store_url, "r1")
    current = path[-1] if path else "queued"
    with pytest.raises(InvalidPhaseMove, match=f"{current} -> {refused}"):
        run.set_phase(refused)
    assert read_log(store_url, "r1") == before_log
    assert read_meta(store_url, "r1") == before_meta


def test_unknown_phase_and_misplaced_halt_class_are_refused(bridge: Bridge, store_url: str) -> None:
    run = bridge.open_run("r1", tenant="acme")
    with pytest.raises(InvalidPhase, match="unknown phase 'exploded'"):
        run.set_phase("exploded")
    with pytest.raises(InvalidPhase, match="halt_class"):
        run.set_phase("running", halt_class="captcha")
    with pytest.raises(InvalidPhase, match="terminal phase"):
        run.finish("running")
    assert names(store_url, "r1") == ["phase"]


def test_finish_writes_phase_then_terminal(bridge: Bridge, store_url: str) -> None:
    run = bridge.open_run("r1", tenant="acme")
    run.set_phase("running")
    terminal_id = run.finish("halted", halt_class="captcha")
    log = read_log(store_url, "r1")
    (_, phase_name, phase_data, t1), (last_id, term_name, term_data, t2) = log[-2:]
    assert (phase_name, term_name) == ("phase", "terminal")
    assert phase_data["phase"] == "halted" and phase_data["halt_class"] == "captcha"
    assert term_data == {"phase": "halted", "run_id": "r1", "halt_class": "captcha"}
    assert t1 == t2
    # The id returned is the terminal event's: its number is the last entry's.
    assert int(terminal_id.rsplit("-", 1)[1]) == int(last_id.split("-")[0]) == len(log)
    meta = read_meta(store_url, "r1")
    assert (meta["phase"], meta["halt_class"]) == ("halted", "captcha")


def test_complete_terminal_has_null_halt_class(bridge: Bridge, store_url: str) -> None:
    run = bridge.open_run("r1", tenant="acme")
    run.set_phase("running")
    run.finish("complete")
    assert read_log(store_url, "r1")[-1][2] == {
        "phase": "complete", "run_id": "r1", "halt_class": None,
    }


def test_nothing_is_accepted_after_terminal(bridge: Bridge, store_url: str) -> None:
    run = bridge.open_run("r1", tenant="acme")
    run.finish("cancelled")
    before = read_log(store_url, "r1")
    with pytest.raises(RunTerminal):
        run.append({"kind": "step", "step_index": 1})
    with pytest.raises(RunTerminal, match="cancelled"):
        run.set_phase("running")
    assert read_log(store_url, "r1") == before
    assert [name for _id, name, _d, _t in before] == ["phase", "phase", "terminal"]


def test_append_with_seq_is_exactly_once(bridge: Bridge, store_url: str) -> None:
    run = bridge.open_run("r1", tenant="acme")
    first = run.append({"kind": "step", "step_index": 1}, seq=1)
    retried = run.append({"kind": "step", "step_index": 1}, seq=1)
    other = run.append({"kind": "step", "step_index": 2}, seq=2)
    assert retried == first != other
    rows = [data for _id, name, data, _t in read_log(store_url, "r1") if name == "step"]
    assert [row["step_index"] for row in rows] == [1, 2]


@pytest.mark.parametrize(
    "row",
    [
        {"kind": "phase", "phase": "complete"},
        {"kind": "terminal"},
        {"kind": "gap"},
        {"type": "phase"},
        {"type": "terminal", "step_index": 1},
    ],
)
def test_reserved_kinds_are_refused(bridge: Bridge, store_url: str, row: dict[str, Any]) -> None:
    run = bridge.open_run("r1", tenant="acme")
    with pytest.raises(InvalidRow, match="reserved"):
        run.append(row)
    assert names(store_url, "r1") == ["phase"]


def test_kind_wins_over_a_reserved_type(bridge: Bridge, store_url: str) -> None:
    run = bridge.open_run("r1", tenant="acme")
    run.append({"kind": "step", "type": "terminal"})
    assert names(store_url, "r1") == ["phase", "step"]


@pytest.mark.parametrize("row", [[1, 2], "text", None, 3, True])
def test_non_object_rows_are_refused(bridge: Bridge, store_url: str, row: Any) -> None:
    run = bridge.open_run("r1", tenant="acme")
    with pytest.raises(InvalidRow, match="JSON object"):
        run.append(row)
    assert names(store_url, "r1") == ["phase"]


@pytest.mark.parametrize("ts", [12345, "yesterday", "2026-13-40T00:00:00"])
def test_bad_ts_is_refused(bridge: Bridge, store_url: str, ts: Any) -> None:
    run = bridge.open_run("r1", tenant="acme")
    with pytest.raises(InvalidRow, match="ts"):
        run.append({"kind": "step", "ts": ts})
    assert names(store_url, "r1") == ["phase"]


def test_row_without_ts_gets_a_utc_stamp(bridge: Bridge, store_url: str) -> None:
    run = bridge.open_run("r1", tenant="acme")
    before = time.time()
    run.append({"kind": "step", "step_index": 1})
    after = time.time()
    _id, _name, data, t_us = read_log(store_url, "r1")[-1]
    assert STAMP_RE.fullmatch(data["ts"]), data["ts"]
    stamped = datetime.fromisoformat(data["ts"].replace("Z", "+00:00"))
    assert stamped.utcoffset() is not None and stamped.utcoffset().total_seconds() == 0
    assert before - 0.002 <= stamped.timestamp() <= after + 0.002
    assert abs(t_us - int(stamped.timestamp() * 1_000_000)) < 1000


def test_ts_without_zone_means_utc(bridge: Bridge, store_url: str) -> None:
    run = bridge.open_run("r1", tenant="acme")
    run.append({"ts": "2026-06-08T00:00:01", "kind": "step"})
    run.append({"ts": "2026-06-08T02:00:01+02:00", "kind": "step"})
    (_, _, first, t1), (_, _, second, t2) = read_log(store_url, "r1")[-2:]
    assert first["ts"] == "2026-06-08T00:00:01"  # stored as written
    assert t1 == t2 == utc_us("2026-06-08T00:00:01")
    assert second["ts"] == "2026-06-08T02:00:01+02:00"


def test_row_is_stored_as_written(bridge: Bridge, store_url: str) -> None:
    row = {
        "ts": "2026-06-08T00:00:01.250Z",
        "kind": "extract",
        "step_index": 7,
        "row": {"text": "a\nb\r\nc", "emoji": "🦗", "nul": "a\u0000b", "deep": [1, {"x": None}]},
        "id": "not-the-event-id",
        "event": "terminal",
    }
    run = bridge.open_run("r1", tenant="acme")
    run.append(row)
    _id, name, data, _t = read_log(store_url, "r1")[-1]
    assert (name, data) == ("extract", row)


def test_writes_to_an_unknown_run_are_refused(bridge: Bridge, store_url: str) -> None:
    with pytest.raises(RunNotFound):
        bridge.run("ghost").set_phase("running")
    with pytest.raises(RunNotFound):
        bridge.run("ghost").append({"kind": "step"})
    assert read_log(store_url, "ghost") == []


# --- AsyncBridge: the same methods, awaited -------------------------------------------


async def test_async_open_is_idempotent_and_tenant_checked(
    abridge: AsyncBridge, store_url: str
) -> None:
    first = await abridge.open_run("a1", tenant="acme")
    await first.set_phase("running")
    again = await abridge.open_run("a1", tenant="acme")
    assert (first.phase_at_open, again.phase_at_open) == ("queued", "running")
    with pytest.raises(TenantMismatch):
        await abridge.open_run("a1", tenant="other")
    assert names(store_url, "a1") == ["phase", "phase"]


async def test_async_invalid_move_writes_nothing(abridge: AsyncBridge, store_url: str) -> None:
    run = await abridge.open_run("a1", tenant="acme")
    with pytest.raises(InvalidPhaseMove, match="queued -> complete"):
        await run.finish("complete")
    assert names(store_url, "a1") == ["phase"]
    assert read_meta(store_url, "a1")["phase"] == "queued"


async def test_async_rows_seq_finish_and_after_terminal(
    abridge: AsyncBridge, store_url: str
) -> None:
    run = await abridge.open_run("a1", tenant="acme")
    await run.set_phase("running")
    first = await run.append({"kind": "step", "step_index": 1}, seq=10)
    assert await run.append({"kind": "step", "step_index": 1}, seq=10) == first
    await run.append({"ts": "2026-06-08T00:00:01", "kind": "click"})
    terminal_id = await run.finish("halted", halt_class="captcha")
    with pytest.raises(RunTerminal):
        await run.append({"kind": "step"})
    log = read_log(store_url, "a1")
    assert [name for _id, name, _d, _t in log] == [
        "phase", "phase", "step", "click", "phase", "terminal",
    ]
    assert log[3][3] == utc_us("2026-06-08T00:00:01")
    assert STAMP_RE.fullmatch(log[2][2]["ts"])
    assert log[-1][2] == {"phase": "halted", "run_id": "a1", "halt_class": "captcha"}
    assert terminal_id.endswith(f"-{len(log):010d}")


async def test_async_refuses_reserved_and_non_object_rows(
    abridge: AsyncBridge, store_url: str
) -> None:
    run = await abridge.open_run("a1", tenant="acme")
    with pytest.raises(InvalidRow, match="reserved"):
        await run.append({"kind": "gap"})
    with pytest.raises(InvalidRow, match="JSON object"):
        await run.append(["not", "an", "object"])  # type: ignore[arg-type]
    assert names(store_url, "a1") == ["phase"]


async def test_async_append_many_writes_every_row_once(
    abridge: AsyncBridge, store_url: str
) -> None:
    run = await abridge.open_run("a1", tenant="acme")
    await run.set_phase("running")
    ids = await run.append_many([{"kind": "step", "step_index": i} for i in range(1, 4)])
    log = read_log(store_url, "a1")
    assert [data.get("step_index") for _id, name, data, _t in log if name == "step"] == [1, 2, 3]
    assert ids == [
        f"{read_meta(store_url, 'a1')['epoch']}-{n:010d}" for n in (3, 4, 5)
    ]
