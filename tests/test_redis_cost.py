"""What one appended row costs Redis, counted (not timed): the commands the append script
runs per row, from ``INFO commandstats`` of a real redis-server; and that renewing the
keys' expiry only now and then still keeps a written run for its retention."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from runlog.calls import LogLimits, append_call, seq_field
from runlog.keys import dedup_key, log_key, meta_key
from runner_bridge import Bridge

RETENTION_S = 100_000
# The script's envelope and our own reading and resetting of the counters.
NOT_PER_ROW = {"evalsha", "eval", "info", "config|resetstat", "script|load", "script|exists"}


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()
    c.connection_pool.disconnect()


def _calls(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def _commands_per_row(client: redis.Redis, bridge: Bridge, rows: int, seq: bool) -> float:
    run = bridge.open_run("r1", tenant="acme")
    run.set_phase("running")
    run.append({"kind": "step", "i": -1})  # loads the script before counting
    client.config_resetstat()
    for i in range(rows):
        kind = "extract" if i % 3 == 0 else "step"
        run.append({"kind": kind, "i": i}, seq=i if seq else None)
    calls = _calls(client)
    inside = sum(n for name, n in calls.items() if name not in NOT_PER_ROW)
    assert calls.get("evalsha", 0) + calls.get("eval", 0) == rows  # one script call per row
    return inside / rows


@pytest.mark.parametrize("seq", [False, True], ids=["no-seq", "seq"])
def test_an_appended_row_costs_at_most_four_redis_commands(
    redis_url: str, client: redis.Redis, seq: bool
) -> None:
    with Bridge.from_url(redis_url, limits=LogLimits(retention_s=RETENTION_S)) as bridge:
        assert _commands_per_row(client, bridge, 200, seq) <= 4
        calls = _calls(client)
        assert calls.get("expire", 0) == 0  # renewal is not per row
        assert calls["xadd"] == calls["publish"] == calls["hmget"] == calls["hset"] == 200


def test_the_counters_exactly_once_and_positions_survive_the_folding(
    redis_url: str, client: redis.Redis
) -> None:
    with Bridge.from_url(redis_url, limits=LogLimits(retention_s=RETENTION_S)) as bridge:
        run = bridge.open_run("r1", tenant="acme")
        run.set_phase("running")
        first = run.append({"kind": "step"}, seq=1)
        assert run.append({"kind": "step"}, seq=1) == first  # a retry is a no-op
        run.append({"kind": "extract", "row": {"a": 1}}, seq=2)
        run.append({"kind": "note"})
        meta = client.hgetall(meta_key("r1"))
        assert meta[b"steps"] == b"1" and meta[b"rows"] == b"1"
        assert meta[b"n"] == b"5"  # queued, running, step, extract, note
        assert meta[seq_field(1).encode()] == b"3"
        assert client.xlen(log_key("r1")) == 5


def test_a_run_from_before_the_move_still_finds_its_records_in_dedup(
    redis_url: str, client: redis.Redis
) -> None:
    with Bridge.from_url(redis_url, limits=LogLimits(retention_s=RETENTION_S)) as bridge:
        run = bridge.open_run("r1", tenant="acme")
        run.set_phase("running")
        first = run.append({"kind": "step"}, seq=1)
        # As the old script left it: the record in dedup, and no 'sm' mark in meta.
        client.hdel(meta_key("r1"), "sm", seq_field(1))
        client.hset(dedup_key("r1"), seq_field(1), first.rsplit("-", 1)[1].lstrip("0"))
        assert run.append({"kind": "step"}, seq=1) == first
        assert client.xlen(log_key("r1")) == 3
        second = run.append({"kind": "step"}, seq=2)
        assert run.append({"kind": "step"}, seq=2) == second  # new records go to meta
        assert client.hexists(meta_key("r1"), seq_field(2))


def _append(client: redis.Redis, run_id: str, limits: LogLimits, i: int) -> None:
    script, keys, args = append_call(run_id, {"kind": "step", "i": i}, limits)
    client.eval(script, len(keys), *keys, *args)


def test_expiry_is_renewed_once_a_tenth_of_the_retention_has_passed(
    redis_url: str, client: redis.Redis
) -> None:
    limits = LogLimits(retention_s=RETENTION_S)
    with Bridge.from_url(redis_url, limits=limits) as bridge:
        run = bridge.open_run("r1", tenant="acme")
        run.set_phase("running")
        keys = (meta_key("r1"), log_key("r1"))
        exp_at = int(client.hget(keys[0], "exp_at") or 0)
        # Fresh expiry: a row leaves the TTL alone (we lowered it to see that).
        for key in keys:
            client.expire(key, RETENTION_S - 5_000)
        _append(client, "r1", limits, 1)
        assert all(client.ttl(key) <= RETENTION_S - 5_000 for key in keys)
        # As if 15% of the retention had passed since the last renewal: the next row renews.
        client.hset(keys[0], "exp_at", exp_at - RETENTION_S * 15 // 100)
        _append(client, "r1", limits, 2)
        assert all(client.ttl(key) > RETENTION_S - 100 for key in keys)
        assert int(client.hget(keys[0], "exp_at") or 0) >= exp_at
        # A run written before exp_at existed (no field) is renewed by its next row.
        client.hdel(keys[0], "exp_at")
        for key in keys:
            client.expire(key, 50)
        _append(client, "r1", limits, 3)
        assert all(client.ttl(key) > RETENTION_S - 100 for key in keys)
