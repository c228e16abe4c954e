"""Redis Cluster: a master that has a replica dies under a live stream and a runner that
keeps writing. The replica is promoted; meanwhile the service answers polls with a soft
503 (never a 500), the runner retries each row with its ``seq`` until the new master takes
it, and the stream carries every event exactly once, in order, without a break."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
import redis
from redis.cluster import RedisCluster
from redis.exceptions import RedisError

from runlog.keys import meta_key
from runner_bridge import AsyncBridge
from runner_bridge.bridge import AsyncRunHandle
from service.app import create_app
from service.auth import TokenTable
from service.settings import Settings

from .conftest import TOKEN_SPEC, TOKENS
from .contract_support import SSE, Reader
from .redis_server import running_cluster
from .test_faults_cluster import run_id_away_from

pytestmark = pytest.mark.slow


def master_of(url: str, run_id: str) -> redis.Redis:
    cluster = RedisCluster.from_url(url)
    try:
        node = cluster.get_node_from_key(meta_key(run_id))
        return redis.Redis(host=node.host, port=node.port)
    finally:
        cluster.close()


async def test_a_master_fails_over_to_its_replica_under_a_live_stream(aiohttp_client) -> None:
    with running_cluster(nodes=3, replicas=1, node_timeout_ms=1000) as url:
        # A run whose master is not the node the URL names: the write path fails over.
        run_id = run_id_away_from(url)
        settings = Settings(tenant_tokens=TOKEN_SPEC, redis_url=url, heartbeat_s=0.3)
        client = await aiohttp_client(
            create_app(settings, TokenTable.parse(TOKEN_SPEC), url),
            server_kwargs={"host": "127.0.0.1"},
        )
        headers = {"X-Mantis-Token": TOKENS["acme"]}
        polls: list[int] = []

        async def write(run: AsyncRunHandle, i: int) -> None:
            for _ in range(400):  # bounded: a failover takes a few seconds here
                try:
                    await run.append({"kind": "step", "step_index": i}, seq=i)
                    return
                except (RedisError, OSError):
                    polls.append((await client.get(f"/v1/runs/{run_id}", headers=headers)).status)
                    await asyncio.sleep(0.05)  # the cluster elects a new master: retry later
            raise AssertionError(f"row {i} was never taken")

        async with AsyncBridge.from_url(url) as bridge:
            run = await bridge.open_run(run_id, tenant="acme")
            await run.set_phase("running")
            await write(run, 0)
            resp = await client.get(SSE.format(run_id=run_id), headers=headers)
            assert resp.status == 200
            reader = Reader(resp)
            await reader.until(lambda r: len(r.events) >= 3)
            master = master_of(url, run_id)
            # Everything so far is on the replica too: this failover loses nothing.
            assert master.wait(1, 5000) >= 1
            pid = int(master.info("server")["process_id"])
            master.close()
            os.kill(pid, signal.SIGKILL)
            for i in range(1, 5):
                await write(run, i)
            await reader.until(lambda r: len(r.events) >= 7, within=30)
            assert not reader.ended, "the stream ended during the failover"
            await run.finish("complete")
            await reader.to_end(within=30)
        resp.close()
    names = [e.event for e in reader.events]
    assert names == ["phase", "phase", *["step"] * 5, "phase", "terminal"]
    assert [e.data["step_index"] for e in reader.events if e.event == "step"] == [0, 1, 2, 3, 4]
    assert set(polls) <= {200, 503}, polls  # never a 500 while the cluster elects
