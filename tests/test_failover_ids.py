"""Event numbers across a Redis failover (CONTRACT section 10, ``runlog/failover.py``).

A failover to a replica that had not received the last writes takes a run's log back: the
next events reuse numbers clients may already have had. The writer notices (a number at or
below one it already wrote) and gives the log a new epoch, so every old cursor gets a
``gap`` event and the retained events again, and live streams end so clients resume that
way. ``MANTIS_WAIT_REPLICAS`` makes each write wait for replicas, and says when they did not
confirm it in time.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from typing import Any

import aiohttp
import orjson
import pytest
import redis

from runlog.calls import LogLimits
from runlog.errors import NotReplicated
from runlog.ids import parse_cursor
from runlog.keys import log_key, meta_key
from runner_bridge import AsyncBridge, Bridge
from runner_bridge.bridge import limits_from_env
from service.app import create_app
from service.auth import TokenTable
from service.settings import Settings

from .conftest import TOKEN_SPEC, TOKENS
from .redis_server import free_port, running_redis


def lose_last_writes(url: str, run_id: str, keep: int) -> None:
    """What a failover to a lagging replica leaves: the log and its count back at ``keep``."""
    client = redis.Redis.from_url(url)
    try:
        # Rebuilt, not XDELed: a stream remembers its top id, a replica's copy does not.
        kept = client.xrange(log_key(run_id), "-", f"{keep}-0")
        pipe = client.pipeline(transaction=True)
        pipe.delete(log_key(run_id))
        for entry_id, fields in kept:
            pipe.xadd(log_key(run_id), fields, id=entry_id)
        pipe.hset(meta_key(run_id), "n", keep)
        pipe.execute()
    finally:
        client.close()


def epoch_of(event_id: str) -> str:
    cursor = parse_cursor(event_id)
    assert cursor is not None and hasattr(cursor, "epoch")
    return str(cursor.epoch)


def test_a_reused_number_gives_the_log_a_new_epoch(redis_url: str) -> None:
    with Bridge.from_url(redis_url, limits=LogLimits()) as bridge:
        run = bridge.open_run("f1", tenant="acme")
        run.set_phase("running")
        ids = [run.append({"kind": "step", "i": i}) for i in range(3)]  # events 3, 4, 5
        old_epoch = epoch_of(ids[-1])
        lose_last_writes(redis_url, "f1", keep=3)
        again = run.append({"kind": "step", "i": "after the failover"})  # number 4, again
        assert again.endswith("-0000000004")
        assert epoch_of(again) != old_epoch
        client = redis.Redis.from_url(redis_url)
        assert client.hget(meta_key("f1"), "epoch").decode() == epoch_of(again)
        client.close()
        # The next write is simply the next number in the new epoch.
        following = run.append({"kind": "step", "i": "next"})
        assert following == f"{epoch_of(again)}-0000000005"


def test_a_repeat_is_not_mistaken_for_a_failover(redis_url: str) -> None:
    with Bridge.from_url(redis_url, limits=LogLimits()) as bridge:
        run = bridge.open_run("f2", tenant="acme")
        first = run.append({"kind": "step"}, seq=1)
        run.append({"kind": "step"}, seq=2)
        assert run.append({"kind": "step"}, seq=1) == first  # a retry: same id, same epoch


async def _events(resp: aiohttp.ClientResponse) -> list[dict[str, Any]]:
    events, block = [], {}
    async for raw in resp.content:
        line = raw.decode().rstrip("\n")
        if line.startswith(":"):
            continue
        if line:
            field, _, value = line.partition(": ")
            block[field] = value
            continue
        if "event" in block:
            events.append(block)
        block = {}
    return events


async def test_live_streams_end_and_old_cursors_get_a_gap(aiohttp_client, redis_url: str) -> None:
    settings = Settings(tenant_tokens=TOKEN_SPEC, redis_url=redis_url)
    client = await aiohttp_client(
        create_app(settings, TokenTable.parse(TOKEN_SPEC), redis_url),
        server_kwargs={"host": "127.0.0.1"},
    )
    headers = {"X-Mantis-Token": TOKENS["acme"], "Accept": "text/event-stream"}
    async with AsyncBridge.from_url(redis_url, limits=LogLimits()) as bridge:
        run = await bridge.open_run("f3", tenant="acme")
        await run.set_phase("running")
        old_ids = [await run.append({"kind": "step", "i": i}) for i in range(3)]
        live = await client.get("/v1/runs/f3/events", headers=headers)
        assert live.status == 200
        reading = asyncio.create_task(_events(live))
        lose_last_writes(redis_url, "f3", keep=3)
        await run.append({"kind": "step", "i": "after"})
        # The stream ends (no event under a reused number reaches it), at a boundary.
        seen = await asyncio.wait_for(reading, 10)
        assert len(seen) == 5  # queued, running, three steps; nothing under a reused number
        assert seen[-1]["id"] == old_ids[-1]
        # Resuming from the old cursor: a gap, then the log as it now is, under new ids.
        resumed = await client.get(
            "/v1/runs/f3/events", headers={**headers, "Last-Event-ID": old_ids[-1]}
        )
        page = await client.get(
            "/v1/runs/f3/events?limit=100", headers={"X-Mantis-Token": TOKENS["acme"]}
        )
        body = await page.json()
        new_epoch = epoch_of(body["events"][0]["id"])
        assert new_epoch != epoch_of(old_ids[-1])
        await run.finish("complete")
        again = await asyncio.wait_for(_events(resumed), 10)
    gap = again[0]
    assert gap["event"] == "gap" and "id" not in gap
    data = orjson.loads(gap["data"])
    assert data["after"] == old_ids[-1]
    assert data["resumed_from"] == f"{new_epoch}-0000000001"
    # Steps 1 and 2 were lost with the failover; the one written after it took number 4.
    assert [orjson.loads(e["data"]).get("i") for e in again if e["event"] == "step"] == [
        0, "after"
    ]
    assert again[-1]["event"] == "terminal"


def _link_up(port: int) -> bool:
    out = subprocess.run(
        ["redis-cli", "-p", str(port), "info", "replication"],
        capture_output=True, text=True, timeout=5, check=False,
    ).stdout
    return "master_link_status:up" in out


def test_durable_appends_wait_for_a_replica() -> None:
    with running_redis() as (primary_url, _primary):
        primary_port = int(primary_url.rsplit(":", 1)[1].split("/")[0])
        replica_port = free_port()
        with running_redis(
            replica_port, "--replicaof", "127.0.0.1", str(primary_port)
        ) as (_replica_url, replica):
            for _ in range(200):  # bounded: the replica syncs in well under 10 s
                if _link_up(replica_port):
                    break
                time.sleep(0.05)  # replication state of another process: poll it
            limits = LogLimits(wait_replicas=1, wait_timeout_ms=2000)
            with Bridge.from_url(primary_url, limits=limits) as bridge:
                run = bridge.open_run("d1", tenant="acme")
                first = run.append({"kind": "step"}, seq=1)
                replica.terminate()
                replica.wait(timeout=10)
                short = LogLimits(wait_replicas=1, wait_timeout_ms=200)
                with Bridge.from_url(primary_url, limits=short) as alone:
                    alone_run = alone.run("d1")
                    with pytest.raises(NotReplicated, match="0 of the 1 replicas"):
                        alone_run.append({"kind": "step"}, seq=2)
                    # Written all the same: a retry with the same seq writes nothing more
                    # (and still waits for the replica).
                    with pytest.raises(NotReplicated):
                        alone_run.append({"kind": "step"}, seq=2)
                client = redis.Redis.from_url(primary_url)
                assert client.xlen(log_key("d1")) == 3  # queued, two steps
                client.close()
                assert first.endswith("-0000000002")


def test_the_wait_settings_are_read_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MANTIS_WAIT_REPLICAS", "2")
    monkeypatch.setenv("MANTIS_WAIT_TIMEOUT_MS", "750")
    limits = limits_from_env()
    assert (limits.wait_replicas, limits.wait_timeout_ms) == (2, 750)
    monkeypatch.setenv("MANTIS_WAIT_REPLICAS", "-1")
    with pytest.raises(ValueError, match="MANTIS_WAIT_REPLICAS must be a non-negative integer"):
        limits_from_env()
