"""The pod's pub/sub connection breaks (or goes silent) under open streams.

A small TCP proxy sits between the pod and a real redis-server. It can cut the pub/sub
connection (the one that sent SUBSCRIBE) or freeze it: keep the socket open but pass
nothing, as a half-open connection behind a dead NAT or firewall does. Either way the
stream stays open, and what was appended meanwhile arrives on the same response.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from runlog.calls import LogLimits
from runner_bridge import AsyncBridge
from service.app import create_app
from service.auth import TokenTable
from service.live_connection import LiveConnection
from service.settings import Settings

from .conftest import TOKEN_SPEC, TOKENS
from .contract_support import SSE, Reader, assert_contiguous


class Link:
    """One proxied connection."""

    def __init__(self, writer: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.upstream = upstream
        self.subscriber = False
        self.frozen = False

    def close(self) -> None:
        for w in (self.writer, self.upstream):
            w.transport.abort()


class Proxy:
    """Forwards 127.0.0.1:<port> to a Redis; can cut or freeze its pub/sub connections."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.links: list[Link] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        link = Link(writer, up_writer)
        self.links.append(link)
        await asyncio.gather(
            self._pump(reader, up_writer, link, upstream=True),
            self._pump(up_reader, writer, link, upstream=False),
            return_exceptions=True,
        )
        link.close()

    async def _pump(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        link: Link,
        *,
        upstream: bool,
    ) -> None:
        while data := await source.read(65536):
            if upstream and b"SUBSCRIBE" in data:
                link.subscriber = True
            if link.frozen:
                continue  # a black hole: nothing passes, nothing is closed
            sink.write(data)
            await sink.drain()
        sink.close()

    def subscribers(self) -> list[Link]:
        return [link for link in self.links if link.subscriber and not link.frozen]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for link in self.links:
            link.close()
        if self.server is not None:
            await self.server.wait_closed()


@pytest.fixture
async def proxy(redis_url: str) -> AsyncIterator[Proxy]:
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    p = Proxy(port)
    await p.start()
    yield p
    await p.stop()


async def open_stream(aiohttp_client, proxy: Proxy, run_id: str) -> tuple[object, Reader]:
    url = f"redis://127.0.0.1:{proxy.port}/0"
    settings = Settings(tenant_tokens=TOKEN_SPEC, redis_url=url, heartbeat_s=0.3)
    client = await aiohttp_client(
        create_app(settings, TokenTable.parse(TOKEN_SPEC), url),
        server_kwargs={"host": "127.0.0.1"},
    )
    resp = await client.get(SSE.format(run_id=run_id), headers={"X-Mantis-Token": TOKENS["acme"]})
    assert resp.status == 200
    return resp, Reader(resp)


async def wait_for_subscriber(proxy: Proxy) -> Link:
    for _ in range(500):  # bounded: the pod's pub/sub connection comes through the proxy
        found = proxy.subscribers()
        if found:
            return found[-1]
        await asyncio.sleep(0.01)
    raise AssertionError("no pub/sub connection came through the proxy")


@pytest.mark.parametrize("fault", ["cut", "half_open"])
async def test_the_stream_stays_open_and_is_repaired_from_the_log(
    aiohttp_client, proxy: Proxy, redis_url: str, fault: str
) -> None:
    async with AsyncBridge.from_url(redis_url, limits=LogLimits()) as bridge:
        run = await bridge.open_run("p1", tenant="acme")
        await run.set_phase("running")
        resp, reader = await open_stream(aiohttp_client, proxy, "p1")
        await reader.until(lambda r: len(r.events) >= 2)
        for i in range(3):
            await run.append({"kind": "step", "step_index": i})
        await reader.until(lambda r: len(r.events) >= 5)
        link = await wait_for_subscriber(proxy)
        if fault == "cut":
            link.close()
        else:
            link.frozen = True
        # Written while the pod cannot hear announcements (the bridge talks to Redis
        # directly, not through the proxy).
        for i in range(3, 10):
            await run.append({"kind": "step", "step_index": i})
        await reader.until(lambda r: len(r.events) >= 12, within=15)
        assert not reader.ended, f"the stream ended after the pub/sub connection was {fault}"
        # Live delivery works again on the new connection.
        await wait_for_subscriber(proxy)
        await run.append({"kind": "step", "step_index": 10})
        await run.finish("complete")
        await reader.to_end(within=15)
    with contextlib.suppress(Exception):
        resp.close()  # type: ignore[attr-defined]
    assert reader.clean
    assert [e.data["step_index"] for e in reader.events if e.event == "step"] == list(range(11))
    assert_contiguous(reader.events, 1, reader.events[-1].n)
    assert reader.events[-1].event == "terminal"


@pytest.mark.parametrize("subscribed", [False, True], ids=["idle", "subscribed"])
async def test_the_heartbeat_ping_is_answered_with_or_without_channels(
    store_url: str, subscribed: bool
) -> None:
    """Redis answers PING differently with and without a subscription; both count (on the
    embedded store too, else every heartbeat would reset its pub/sub connection)."""
    got: list[object] = []
    live = await LiveConnection.open(store_url, got.extend)
    try:
        if subscribed:
            live.subscribe(b"mantis-test-channel")
        live.ping(1.0)
        assert live.ping_sent_at == 1.0
        for _ in range(300):  # bounded: the PONG crosses a real socket
            if live.ping_sent_at is None:
                break
            await asyncio.sleep(0.01)
        assert live.ping_sent_at is None, "the PING was answered, yet counted as unanswered"
        assert all(message[0] != b"pong" for message in got)  # type: ignore[index]
    finally:
        live.close()


async def test_streams_end_cleanly_when_the_store_stays_away(
    aiohttp_client, proxy: Proxy, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restart or failover is waited out; an outage longer than LIVE_GIVE_UP_S is not:
    streams end at an event boundary so clients resume (perhaps on a pod that can hear)."""
    import service.hub

    monkeypatch.setattr(service.hub, "LIVE_GIVE_UP_S", 0.5)
    async with AsyncBridge.from_url(redis_url, limits=LogLimits()) as bridge:
        run = await bridge.open_run("p2", tenant="acme")
        await run.set_phase("running")
        _resp, reader = await open_stream(aiohttp_client, proxy, "p2")
        await reader.until(lambda r: len(r.events) >= 2)
        await wait_for_subscriber(proxy)
        await proxy.stop()  # the store is gone for good, as far as this pod can tell
        await reader.to_end(within=15)
    assert reader.ended and reader.clean
    assert [e.event for e in reader.events] == ["phase", "phase"]
