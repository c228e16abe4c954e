"""The store restarts under a live stream: the stream stays open and loses nothing.

A real redis-server with an append-only file is stopped and started again on the same port
while a client streams a live run through the service. The pod's pub/sub connection
breaks; the stream stays open; the pod reconnects, reads from the log what was announced
while it was away and carries on, so the one response delivers every event exactly once.
(Should the repair fail, streams end at an event boundary and clients resume by cursor:
the reader below still reconnects with Last-Event-ID, as any SSE client does.)
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from runner_bridge import AsyncBridge
from service.app import create_app
from service.auth import TokenTable
from service.settings import Settings

from .conftest import TOKEN_SPEC, TOKENS
from .redis_server import _wait_ready, free_port


class PersistentRedis:
    """A redis-server whose data survives a restart (AOF, fsync on every write)."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server") or "redis-server"
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                str(self.workdir),
                "--logfile",
                str(self.workdir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_ready(self.port, self.proc)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture
def persistent_redis(tmp_path: Path) -> Iterator[PersistentRedis]:
    server = PersistentRedis(tmp_path)
    server.start()
    yield server
    server.stop()


async def test_stream_survives_a_store_restart(aiohttp_client, persistent_redis) -> None:
    url = persistent_redis.url
    settings = Settings(tenant_tokens=TOKEN_SPEC, redis_url=url)
    app = create_app(settings, TokenTable.parse(TOKEN_SPEC), url)
    client = await aiohttp_client(app, server_kwargs={"host": "127.0.0.1"})
    headers = {"X-Mantis-Token": TOKENS["acme"], "Accept": "text/event-stream"}
    received: list[tuple[str, str, str]] = []
    statuses: list[int] = []
    progress = asyncio.Condition()

    async def reader() -> None:
        last_id = ""
        for _attempt in range(200):  # bounded reconnect loop
            extra = {"Last-Event-ID": last_id} if last_id else {}
            try:
                resp = await client.get("/v1/runs/rs/events", headers={**headers, **extra})
            except aiohttp.ClientError:
                await asyncio.sleep(0.05)  # reconnect backoff, as any SSE client has
                continue
            statuses.append(resp.status)
            if resp.status == 204:
                return
            if resp.status != 200:
                resp.release()
                await asyncio.sleep(0.05)  # reconnect backoff (503 while the store is away)
                continue
            block: dict[str, str] = {}
            with contextlib.suppress(aiohttp.ClientError):
                async for raw in resp.content:
                    line = raw.decode().rstrip("\n")
                    if line:
                        field, _, value = line.partition(": ")
                        block[field] = value
                        continue
                    if "event" in block:
                        async with progress:
                            received.append((block["event"], block.get("id", ""), block["data"]))
                            last_id = block.get("id") or last_id
                            progress.notify_all()
                    block = {}
        raise AssertionError("reader did not finish within its reconnect budget")

    async def until(count: int) -> None:
        async with progress:
            await asyncio.wait_for(progress.wait_for(lambda: len(received) >= count), 15)

    async with AsyncBridge.from_url(url) as bridge:
        run = await bridge.open_run("rs", tenant="acme")
        # The reader starts once the run exists: before, its first answer would be a 404.
        task = asyncio.create_task(reader())
        await run.set_phase("running")
        for i in range(20):
            await run.append({"kind": "step", "step_index": i})
        await until(22)
    persistent_redis.stop()
    persistent_redis.start()
    async with AsyncBridge.from_url(url) as bridge:
        run = bridge.run("rs")
        for i in range(20, 40):
            await run.append({"kind": "step", "step_index": i})
        await run.finish("complete")
    await asyncio.wait_for(task, 30)

    steps = [orjson.loads(data)["step_index"] for event, _, data in received if event == "step"]
    assert steps == list(range(40)), "every row exactly once, in order"
    ids = [event_id for _, event_id, _ in received]
    assert len(set(ids)) == len(ids) and all(ids)
    assert received[-1][0] == "terminal"
    assert statuses == [200, 204], "the stream survived the restart (then 204 after the end)"
