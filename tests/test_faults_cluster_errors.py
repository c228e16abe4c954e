"""A store mid-failover answers with errors, not silence: a Redis Cluster electing a new
master says CLUSTERDOWN or TRYAGAIN, a demoted primary says READONLY, a full pool says
MaxConnectionsError. Each is a soft ``503`` with ``Retry-After`` for JSON requests (and the
retry-later answer for streams), never a ``500``. The store here is a small TCP server that
speaks the Redis protocol and answers every command with that error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from service.app import create_app
from service.auth import TokenTable
from service.settings import Settings

from .conftest import TOKEN_SPEC, TOKENS


async def _erring_store(reply: bytes) -> AsyncIterator[str]:
    """A TCP server speaking RESP that answers every command with ``reply``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                # One error reply per command in the chunk (inline or RESP arrays).
                commands = max(1, data.count(b"*") if data.startswith(b"*") else 1)
                writer.write(reply * commands)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    "reply",
    [
        b"-CLUSTERDOWN The cluster is down\r\n",
        b"-TRYAGAIN Multiple keys request during rehashing of slot\r\n",
        b"-READONLY You can't write against a read only replica.\r\n",
        b"-MASTERDOWN Link with MASTER is down\r\n",
    ],
)
async def test_a_store_mid_failover_is_a_soft_503(aiohttp_client, reply: bytes) -> None:
    async for url in _erring_store(reply):
        settings = Settings(tenant_tokens=TOKEN_SPEC, redis_url=url)
        client = await aiohttp_client(
            create_app(settings, TokenTable.parse(TOKEN_SPEC), url),
            server_kwargs={"host": "127.0.0.1"},
        )
        headers = {"X-Mantis-Token": TOKENS["acme"]}
        for method, path, body in (
            ("GET", "/v1/runs/r1", None),
            ("GET", "/v1/runs/r1/events", None),
            ("POST", "/v1/predict", {"task_suite": {}}),
        ):
            resp = await client.request(method, path, headers=headers, json=body)
            assert resp.status == 503, (method, path, await resp.text())
            assert resp.headers["Retry-After"].isdigit()
            assert (await resp.json())["error"]["code"] == "unavailable"
        stream = await client.get(
            "/v1/runs/r1/events", headers={**headers, "Accept": "text/event-stream"}
        )
        assert stream.status == 200  # the retry-later answer an EventSource retries
        assert b": unavailable" in await stream.read()
