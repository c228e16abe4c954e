"""The webhooks scenario's parts: a local receiver and runs that finish, each served as a
load process (``python -m bench.hooks``, ops over stdin like the other workers) so that
neither loads the orchestrator."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from aiohttp import web

from runlog.calls import LogLimits
from runner_bridge import AsyncBridge
from service.webhooks.model import Endpoint, new_endpoint_id, new_secret
from service.webhooks.store import WebhookStore

from .worker import run, serve

# Deliveries per run for an endpoint taking both types: run.phase for queued, running and
# complete, and run.finished.
DELIVERIES_PER_RUN = 4
RUN_PREFIX = "hook-"


class Receiver:
    """An aiohttp receiver on 127.0.0.1 that answers 204 and counts the deliveries of the
    scenario's runs, by time."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.ids: set[str] = set()
        self.dups = 0
        self._runner: web.AppRunner | None = None
        self._more = asyncio.Event()
        self.base = ""

    async def _handle(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        if not str(body["data"]["run_id"]).startswith(RUN_PREFIX):
            return web.Response(status=204)  # the stream's own run: not counted
        wid = request.headers.get("webhook-id", "")
        if wid in self.ids:
            self.dups += 1
        self.ids.add(wid)
        self.times.append(time.monotonic())
        self._more.set()
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        server = site._server
        port = server.sockets[0].getsockname()[1] if server is not None else 0  # type: ignore[attr-defined]
        self.base = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_for(self, count: int, limit_s: float) -> None:
        """Until ``count`` distinct deliveries arrived, or ``limit_s`` passed."""
        deadline = time.monotonic() + limit_s
        while len(self.ids) < count and time.monotonic() < deadline:
            self._more.clear()
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    await self._more.wait()
            except TimeoutError:
                return

    def count_between(self, start: float, end: float) -> int:
        return sum(1 for t in self.times if start <= t < end)


async def register(admin: object, tenant: str, url: str) -> None:
    """Register an endpoint straight in Redis (the bench has no tenant token at hand)."""
    endpoint = Endpoint(id=new_endpoint_id(), url=url, events=("run.phase", "run.finished"),
                        secret=new_secret(), created_at="bench")
    source, keys_, args = WebhookStore.register_call(tenant, endpoint)
    await admin.eval(source, len(keys_), *keys_, *args)  # type: ignore[attr-defined]


async def finish_runs(
    url: str, tenant: str, count: int, *, prefix: str = RUN_PREFIX, rate: float | None = None,
    concurrency: int = 50,
) -> float:
    """Open, start and complete ``count`` runs, at ``rate`` runs/s or as fast as possible;
    returns the runs per second achieved."""
    started = time.monotonic()
    async with AsyncBridge.from_url(url, limits=LogLimits()) as bridge:
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            if rate is not None:
                await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
            async with sem:
                run = await bridge.open_run(f"{prefix}{i}", tenant=tenant)
                await run.set_phase("running")
                await run.finish("complete")

        await asyncio.gather(*(one(i) for i in range(count)))
    return count / max(1e-9, time.monotonic() - started)


class HookWorker:
    """The ops of ``python -m bench.hooks``: a receiver, or a maker of finished runs."""

    def __init__(self) -> None:
        self.receiver = Receiver()
        self._mark = 0

    async def op_listen(self) -> dict[str, Any]:
        await self.receiver.start()
        return {"base": self.receiver.base}

    async def op_window_start(self) -> dict[str, Any]:
        self._mark = len(self.receiver.times)
        return {"t": time.monotonic()}

    async def op_window_end(self) -> dict[str, Any]:
        return {"t": time.monotonic(), "count": len(self.receiver.times) - self._mark}

    async def op_wait_for(self, count: int, wait_s: float) -> dict[str, Any]:
        await self.receiver.wait_for(count, wait_s)
        r = self.receiver
        return {"distinct": len(r.ids), "dups": r.dups,
                "last_t": r.times[-1] if r.times else 0.0, "now": time.monotonic()}

    async def op_finish_runs(
        self, url: str, tenant: str, count: int, prefix: str, rate: float | None = None,
        wait_s: float = 0.0,
    ) -> dict[str, Any]:
        """``wait_s`` bounds the call on the orchestrator's side only."""
        t0 = time.monotonic()
        per_s = await finish_runs(url, tenant, count, prefix=prefix, rate=rate)
        return {"per_s": per_s, "t0": t0}


async def main() -> None:
    worker = HookWorker()
    try:
        await serve({
            "listen": worker.op_listen,
            "window_start": worker.op_window_start,
            "window_end": worker.op_window_end,
            "wait_for": worker.op_wait_for,
            "finish_runs": worker.op_finish_runs,
        })
    finally:
        await worker.receiver.stop()


if __name__ == "__main__":
    run(main())
