"""Redis Cluster: the node the pod's pub/sub connection uses dies under an open stream.

Classic pub/sub messages reach every node of a cluster, so the hub reconnects to another
node it knows, repairs the feed from the log and the stream carries on, unbroken.
"""

from __future__ import annotations

import os
import signal

import redis
from redis.cluster import RedisCluster

from runlog.keys import meta_key
from runner_bridge import AsyncBridge
from service.app import create_app
from service.auth import TokenTable
from service.settings import Settings

from .conftest import TOKEN_SPEC, TOKENS
from .contract_support import SSE, Reader
from .redis_server import running_cluster


def run_id_away_from(url: str) -> str:
    """A run id whose keys live on another node than the one ``url`` names."""
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    cluster = RedisCluster.from_url(url)
    try:
        for i in range(1000):
            run_id = f"away-{i}"
            if cluster.get_node_from_key(meta_key(run_id)).port != port:
                return run_id
    finally:
        cluster.close()
    raise AssertionError("every run id landed on one node")


async def test_the_hub_moves_to_another_node_when_its_node_dies(aiohttp_client) -> None:
    with running_cluster() as url:
        run_id = run_id_away_from(url)
        settings = Settings(tenant_tokens=TOKEN_SPEC, redis_url=url, heartbeat_s=0.3)
        client = await aiohttp_client(
            create_app(settings, TokenTable.parse(TOKEN_SPEC), url),
            server_kwargs={"host": "127.0.0.1"},
        )
        async with AsyncBridge.from_url(url) as bridge:
            run = await bridge.open_run(run_id, tenant="acme")
            await run.set_phase("running")
            # Loaded on every node now: redis-py's cluster client loads a missing script on
            # all primaries, which cannot work once one is dead (a bridge matter, not ours).
            await run.append({"kind": "step", "step_index": 0})
            resp = await client.get(
                SSE.format(run_id=run_id), headers={"X-Mantis-Token": TOKENS["acme"]}
            )
            assert resp.status == 200
            reader = Reader(resp)
            await reader.until(lambda r: len(r.events) >= 3)
            # Kill the node the URL names (the one this test's cluster started first).
            node = redis.Redis.from_url(url)
            pid = int(node.info("server")["process_id"])
            node.close()
            os.kill(pid, signal.SIGKILL)
            for i in range(1, 4):
                await run.append({"kind": "step", "step_index": i})
            await reader.until(lambda r: len(r.events) >= 6, within=15)
            assert not reader.ended, "the stream ended when the pub/sub node died"
            await run.finish("complete")
            await reader.to_end(within=15)
        resp.close()
    assert [e.event for e in reader.events] == [
        "phase", "phase", "step", "step", "step", "step", "phase", "terminal"
    ]
