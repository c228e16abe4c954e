"""Every Redis client has a bounded pool that callers wait on (runlog/connect.py).

A runner process with hundreds of runs writing at once (asyncio) or many threads writing at
once (sync) must neither fail nor open a connection per writer: the real redis-server's
CLIENT LIST shows no more connections than the pool's bound, and every event is written.
The same on a real Redis Cluster, whose clients redis-py gives no waiting pool of its own.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from runlog.calls import LogLimits
from runlog.connect import DEFAULT_MAX_CONNECTIONS, async_client, sync_client
from runlog.keys import log_key, meta_key
from runner_bridge import AsyncBridge, Bridge

from .redis_server import running_cluster

RUNS = 500
ROWS_PER_RUN = 4
THREADS = 64


@pytest.fixture
def admin(redis_url: str) -> Iterator[redis.Redis]:
    """A separate connection that watches the server's client list."""
    client = redis.Redis.from_url(redis_url, client_name="bounds-admin")
    yield client
    client.close()


def _named(url: str, name: str) -> str:
    """The URL with a client name, which every connection made from it announces."""
    return f"{url}?client_name={name}"


def _clients(admin: redis.Redis, name: str) -> int:
    """Connections open on the server under that name (other tests' are not counted)."""
    return sum(1 for c in admin.client_list() if c.get("name") == name)


def _assert_written(admin: redis.Redis, run_ids: list[str], rows: int) -> None:
    # open (queued) + running + rows + complete (phase and terminal records).
    for run_id in run_ids:
        meta = admin.hgetall(meta_key(run_id))
        assert meta[b"phase"] == b"complete", (run_id, meta)
        assert admin.xlen(log_key(run_id)) == int(meta[b"n"]) >= rows + 2


async def test_async_bridge_500_runs_at_once_stay_within_the_pool(
    redis_url: str, admin: redis.Redis
) -> None:
    # Every run waits at a gate until all 500 are open, then they all append at once.
    gate = asyncio.Event()
    opened = 0

    async def one_run(bridge: AsyncBridge, index: int) -> None:
        nonlocal opened
        run = await bridge.open_run(f"bound-{index}", tenant="acme")
        opened += 1
        if opened == RUNS:
            gate.set()
        await gate.wait()
        await run.set_phase("running")
        for seq in range(1, ROWS_PER_RUN + 1):
            await run.append({"kind": "step", "step_index": seq}, seq=seq)
        await run.finish("complete")

    async with AsyncBridge.from_url(_named(redis_url, "async500"), limits=LogLimits()) as bridge:
        await asyncio.wait_for(
            asyncio.gather(*(one_run(bridge, i) for i in range(RUNS))), timeout=50
        )
        # The pool keeps what it opened, so the count now is the most it ever held.
        opened_by_bridge = _clients(admin, "async500")
        pool = bridge.client.connection_pool
        assert pool.max_connections == DEFAULT_MAX_CONNECTIONS
    assert 1 < opened_by_bridge <= DEFAULT_MAX_CONNECTIONS, opened_by_bridge
    _assert_written(admin, [f"bound-{i}" for i in range(RUNS)], ROWS_PER_RUN)


def _threaded_runs(bridge: Bridge, prefix: str, threads: int) -> list[str]:
    barrier = threading.Barrier(threads, timeout=30)

    def one_run(index: int) -> str:
        run = bridge.open_run(f"{prefix}-{index}", tenant="acme")
        barrier.wait()  # every thread writes at the same time
        run.set_phase("running")
        for seq in range(1, ROWS_PER_RUN + 1):
            run.append({"kind": "step", "step_index": seq}, seq=seq)
        run.finish("complete")
        return run.run_id

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(one_run, range(threads), timeout=50))


def test_sync_bridge_from_64_threads_stays_within_the_pool(
    redis_url: str, admin: redis.Redis
) -> None:
    with Bridge.from_url(_named(redis_url, "threads64"), limits=LogLimits()) as bridge:
        run_ids = _threaded_runs(bridge, "threads", THREADS)
        opened_by_bridge = _clients(admin, "threads64")
    assert 1 < opened_by_bridge <= DEFAULT_MAX_CONNECTIONS, opened_by_bridge
    _assert_written(admin, run_ids, ROWS_PER_RUN)


def test_a_small_bound_makes_threads_wait_not_fail(redis_url: str, admin: redis.Redis) -> None:
    # 50 threads, 3 connections: most threads must wait for one at every call, and all
    # succeed; the server never sees a fourth connection.
    client = sync_client(_named(redis_url, "narrow3"), max_connections=3)
    with Bridge(client, limits=LogLimits()) as bridge:
        run_ids = _threaded_runs(bridge, "narrow", 50)
        opened_by_bridge = _clients(admin, "narrow3")
    assert 1 <= opened_by_bridge <= 3, opened_by_bridge
    _assert_written(admin, run_ids, ROWS_PER_RUN)


@pytest.fixture(scope="module")
def cluster_url() -> Iterator[str]:
    with running_cluster() as url:
        yield url


def _node_clients(cluster_url: str, name: str) -> dict[int, int]:
    """Connections named ``name`` on each node of the cluster, by port."""
    with redis.cluster.RedisCluster.from_url(cluster_url) as probe:
        ports = sorted(node.port for node in probe.get_nodes())
    counts = {}
    for port in ports:
        with redis.Redis(host="127.0.0.1", port=port) as node:
            counts[port] = sum(1 for c in node.client_list() if c.get("name") == name)
    return counts


def _within(counts: dict[int, int], cluster_url: str, bound: int, extra_on_seed: int) -> bool:
    # redis-py's asyncio cluster client keeps the connection it discovered the cluster
    # with (on the node the URL names) outside the node's pool: one more there, for good.
    seed = int(cluster_url.rsplit(":", 1)[1].split("/")[0])
    return len(counts) == 3 and all(
        1 <= n <= bound + (extra_on_seed if port == seed else 0) for port, n in counts.items()
    )


async def test_cluster_async_bridge_waits_at_the_bound(cluster_url: str) -> None:
    # 3 connections per node for 200 runs: without waiting, most calls would fail with
    # MaxConnectionsError (redis-py's asyncio cluster client has no blocking pool).
    client = await async_client(_named(cluster_url, "cl-async3"), max_connections=3)
    async with AsyncBridge(client, limits=LogLimits()) as bridge:

        async def one_run(index: int) -> None:
            run = await bridge.open_run(f"clb-{index}", tenant="acme")
            await run.set_phase("running")
            for seq in range(1, ROWS_PER_RUN + 1):
                await run.append({"kind": "step", "step_index": seq}, seq=seq)
            await run.append_many([{"kind": "note"}] * 3)
            await run.finish("complete")

        await asyncio.wait_for(asyncio.gather(*(one_run(i) for i in range(200))), timeout=50)
        counts = _node_clients(cluster_url, "cl-async3")
    assert _within(counts, cluster_url, 3, extra_on_seed=1), counts


def test_cluster_sync_bridge_threads_wait_at_the_bound(cluster_url: str) -> None:
    client = sync_client(_named(cluster_url, "cl-sync3"), max_connections=3)
    with Bridge(client, limits=LogLimits()) as bridge:
        run_ids = _threaded_runs(bridge, "clt", 40)
        counts = _node_clients(cluster_url, "cl-sync3")
        phases = {bridge.client.hget(meta_key(run_id), "phase") for run_id in run_ids}
    assert _within(counts, cluster_url, 3, extra_on_seed=0), counts
    assert phases == {b"complete"}
