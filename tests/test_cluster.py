"""Redis Cluster: a URL naming any cluster node switches bridge and service to cluster mode."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from redis.cluster import RedisCluster

from runner_bridge import AsyncBridge, Bridge
from service.app import create_app
from service.appkeys import HUB
from service.auth import TokenTable
from service.settings import Settings

from .conftest import TOKEN_SPEC, TOKENS
from .redis_server import running_cluster


@pytest.fixture(scope="module")
def cluster_url() -> Iterator[str]:
    with running_cluster() as url:
        yield url


def test_bridge_uses_cluster_client(cluster_url: str) -> None:
    with Bridge.from_url(cluster_url) as bridge:
        assert isinstance(bridge.client, RedisCluster)
        run = bridge.open_run("cl-sync", tenant="acme")
        first = run.append({"kind": "step", "step_index": 1})
        assert run.append({"kind": "step", "step_index": 1}, seq=7) != first
        assert run.append({"kind": "step", "step_index": 1}, seq=7) == run.append({}, seq=7)


async def test_stream_across_slots_replay_and_live(aiohttp_client, cluster_url: str) -> None:
    settings = Settings(tenant_tokens=TOKEN_SPEC, redis_url=cluster_url)
    app = create_app(settings, TokenTable.parse(TOKEN_SPEC), cluster_url)
    client = await aiohttp_client(app, server_kwargs={"host": "127.0.0.1"})
    headers = {"X-Mantis-Token": TOKENS["acme"]}
    # Run ids chosen to land on different nodes' slots.
    run_ids = [f"cl-run-{i}" for i in range(6)]
    async with AsyncBridge.from_url(cluster_url) as bridge:
        handles = [await bridge.open_run(run_id, tenant="acme") for run_id in run_ids]
        for handle in handles:
            await handle.set_phase("running")
            await handle.append({"kind": "step", "step_index": 1})

        async def read(run_id: str) -> list[str]:
            resp = await client.get(f"/v1/runs/{run_id}/events?sse=true", headers=headers)
            assert resp.status == 200
            body = (await resp.read()).decode()
            return [line[7:] for line in body.splitlines() if line.startswith("event: ")]

        readers = [asyncio.create_task(read(run_id)) for run_id in run_ids]
        # Live part: wait until every stream is watched on the pod, then finish the runs.
        hub = app[HUB]
        for _ in range(200):
            if hub.feed_count == len(run_ids):
                break
            await asyncio.sleep(0.01)
        for handle in handles:
            await handle.append({"kind": "step", "step_index": 2})
            await handle.finish("complete")
        results = await asyncio.wait_for(asyncio.gather(*readers), timeout=20)
    for names in results:
        assert names == ["phase", "phase", "step", "step", "phase", "terminal"]


async def test_pipelined_appends_on_a_cluster(cluster_url: str) -> None:
    async with AsyncBridge.from_url(cluster_url) as bridge:
        run = await bridge.open_run("cl-many", tenant="acme")
        ids = await run.append_many([{"kind": "step", "step_index": i} for i in range(5)])
        assert [int(i.split("-")[1]) for i in ids] == [2, 3, 4, 5, 6]
        await bridge.client.script_flush()  # the store forgets its scripts: loaded again
        more = await run.append_many([{"kind": "step", "step_index": 5}])
        assert int(more[0].split("-")[1]) == 7
