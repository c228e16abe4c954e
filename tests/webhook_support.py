"""A real webhook receiver (aiohttp on 127.0.0.1) and a resolver that maps names at will."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int


@dataclass
class Receiver:
    """Answers by path: ``/ok/..`` 200; ``/flaky/<n>/..`` 500 for the first n requests of
    each webhook-id; ``/every/<k>/..`` 503 for the first request of every k-th webhook-id;
    ``/hang/..`` never answers the first request of each webhook-id, ``/stall/..`` never
    answers; ``/redirect/..`` 302 to ``/ok/..``."""

    base: str = ""
    got: list[Received] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    _seen: Counter[str] = field(default_factory=Counter)
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base = f"http://127.0.0.1:{port}"

    @property
    def port(self) -> int:
        return int(self.base.rsplit(":", 1)[1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        parts = request.path.strip("/").split("/")
        wid = request.headers.get("webhook-id", "")
        self._seen[wid] += 1
        status = 200
        kind = parts[0]
        if kind == "flaky" and self._seen[wid] <= int(parts[1]):
            status = 500
        elif kind == "every" and self._seen[wid] == 1 and len(self._seen) % int(parts[1]) == 0:
            status = 503
        elif kind == "redirect":
            status = 302
        self.got.append(Received(request.path, dict(request.headers), body, status))
        self.changed.set()
        if (kind == "hang" and self._seen[wid] == 1) or kind == "stall":
            await asyncio.sleep(3600)
        if status == 302:
            raise web.HTTPFound("/ok/redirected")
        return web.Response(status=status, text="ok" if status == 200 else "no")

    def on(self, prefix: str) -> list[Received]:
        return [r for r in self.got if r.path.startswith(prefix)]

    async def wait_for(self, predicate: Any, limit_s: float = 30.0) -> None:
        """Until ``predicate()`` holds (re-checked on every request received)."""

        async def loop() -> None:
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(loop(), limit_s)


class MapResolver(AbstractResolver):
    """Names in ``table`` resolve to the address given there (changeable at any time);
    anything else is not found."""

    def __init__(self, table: dict[str, str]) -> None:
        self.table = table

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host not in self.table:
            raise OSError(f"{host} not found")
        address = self.table[host]
        fam = socket.AF_INET6 if ":" in address else socket.AF_INET
        return [
            ResolveResult(hostname=host, host=address, port=port, family=fam, proto=0,
                          flags=socket.AI_NUMERICHOST)
        ]

    async def close(self) -> None:
        return None
