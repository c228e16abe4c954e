"""Durable Streams on a real Redis Cluster: every stream's keys share one hash tag, so each
script runs on one node; streams spread over the nodes; forks copy across slots."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from service.app import create_app
from service.auth import TokenTable
from service.settings import Settings

from .conftest import TOKEN_SPEC, TOKENS
from .redis_server import running_cluster

ACME = {"X-Mantis-Token": TOKENS["acme"]}
JSON = {**ACME, "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def cluster_url() -> Iterator[str]:
    with running_cluster() as url:
        yield url


async def test_streams_on_a_cluster(aiohttp_client: Any, cluster_url: str) -> None:
    settings = Settings(tenant_tokens=TOKEN_SPEC, redis_url=cluster_url)
    app = create_app(settings, TokenTable.parse(TOKEN_SPEC), cluster_url)
    client = await aiohttp_client(app, server_kwargs={"host": "127.0.0.1"})
    names = [f"cluster/stream-{i}" for i in range(8)]  # spread over the nodes' slots
    tails = {}
    for name in names:
        made = await client.put(f"/v1/stream/{name}", headers=JSON, data='[{"n":0}]')
        assert made.status == 201
        tails[name] = made.headers["Stream-Next-Offset"]
    polls = [
        asyncio.ensure_future(
            client.get(f"/v1/stream/{name}?offset={tails[name]}&live=long-poll", headers=ACME)
        )
        for name in names
    ]
    for i, name in enumerate(names):
        producer = {"Producer-Id": "w", "Producer-Epoch": "0", "Producer-Seq": "0"}
        appended = await client.post(
            f"/v1/stream/{name}", headers={**JSON, **producer}, data=f'{{"n":{i + 1}}}'
        )
        assert appended.status == 200
    for i, poll in enumerate(polls):
        resp = await asyncio.wait_for(poll, 15)
        assert await resp.json() == [{"n": i + 1}]
    fork = await client.put(
        "/v1/stream/cluster/fork", headers={**JSON, "Stream-Forked-From": f"/v1/stream/{names[0]}"}
    )
    assert fork.status == 201
    assert await (await client.get("/v1/stream/cluster/fork", headers=ACME)).json() == [
        {"n": 0},
        {"n": 1},
    ]
    assert (await client.delete(f"/v1/stream/{names[0]}", headers=ACME)).status == 204
    assert (await client.get(f"/v1/stream/{names[0]}", headers=ACME)).status == 410
    assert (await client.delete("/v1/stream/cluster/fork", headers=ACME)).status == 204
    assert (await client.get(f"/v1/stream/{names[0]}", headers=ACME)).status == 404
