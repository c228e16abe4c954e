"""One measured environment: redis-server and the service on core 0, load on core 1."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aredis

from .procs import (
    CLIENT_CORE,
    SERVER_CORE,
    Meter,
    RedisProc,
    ServiceProc,
    local_ports_to,
    running_redis,
    service_process,
    wait_service,
)
from .worker import Worker

TENANT = "bench"
# Commands the orchestrator itself sends while measuring; left out of per-event counts.
_OWN_COMMANDS = {"info", "client|list", "config|resetstat"}


@dataclass
class Env:
    """Everything a scenario drives and measures."""

    redis: RedisProc
    service: ServiceProc
    loadgen: Worker
    publisher: Worker
    admin: aredis.Redis
    loop: str
    pinned: bool

    def meter(self) -> Meter:
        return Meter({
            "service": self.service.pid,
            "redis": self.redis.pid,
            "loadgen": self.loadgen.pid,
            "publisher": self.publisher.pid,
        })

    async def command_counts(self) -> dict[str, int]:
        """INFO commandstats as {command: calls}, without the orchestrator's own commands."""
        stats: dict[str, Any] = await self.admin.info("commandstats")
        counts: dict[str, int] = {}
        for key, value in stats.items():
            name = key.removeprefix("cmdstat_")
            if name not in _OWN_COMMANDS:
                counts[name] = int(value["calls"])
        return counts

    async def service_connections(self) -> int:
        """Entries of CLIENT LIST that are the service's own connections to Redis."""
        ports = local_ports_to(self.service.pid, self.redis.port)
        clients: list[dict[str, Any]] = await self.admin.client_list()
        return sum(1 for c in clients if int(str(c.get("addr", ":0")).rsplit(":", 1)[1]) in ports)


def command_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Calls per command between two ``command_counts`` (commands with none left out)."""
    names = set(before) | set(after)
    delta = {n: after.get(n, 0) - before.get(n, 0) for n in names}
    return {n: d for n, d in sorted(delta.items()) if d}


# Which server a scenario measures: the service, or the reference (nginx + Nchan) with its
# in-memory store or its Redis store (the bench's redis-server).
SERVERS = ("service", "nchan-memory", "nchan-redis")


@contextlib.contextmanager
def _server(
    server: str, workdir: Path, redis_url: str, token: str, loop: str, core: int | None,
    service_env: dict[str, str],
) -> Iterator[ServiceProc]:
    if server == "service":
        with service_process(
            workdir, redis_url, f"{TENANT}={token}", loop=loop, core=core, env=service_env
        ) as service:
            yield service
        return
    from .nchan import nginx_process

    with nginx_process(workdir, redis_url if server == "nchan-redis" else None, core) as nginx:
        yield nginx


@contextlib.asynccontextmanager
async def environment(
    workdir: Path, *, loop: str, pin: bool, service_env: dict[str, str] | None = None,
    server: str = "service",
) -> AsyncIterator[Env]:
    """Start redis-server, the server (``python -m service``, or nginx + Nchan), the load
    generator and the publisher."""
    if server not in SERVERS:
        raise ValueError(f"server must be one of {SERVERS}, got {server!r}")
    token = secrets.token_urlsafe(16)
    server_core = SERVER_CORE if pin else None
    client_core = CLIENT_CORE if pin else None
    nchan = server != "service"
    with (
        running_redis(workdir, server_core) as redis_proc,
        _server(server, workdir, redis_proc.url, token, loop, server_core,
                service_env or {}) as service,
    ):
        admin = aredis.Redis.from_url(redis_proc.url)
        workers: list[Worker] = []
        try:
            lg_args = [str(service.port), token] + (["/sub/{run}"] if nchan else [])
            loadgen = await Worker.start("loadgen", "bench.loadgen", lg_args,
                                         core=client_core, workdir=workdir)
            workers.append(loadgen)
            if nchan:
                publisher = await Worker.start("publisher", "bench.nchan_publisher",
                                               [str(service.port)], core=client_core,
                                               workdir=workdir)
            else:
                publisher = await Worker.start("publisher", "bench.publisher",
                                               [redis_proc.url, TENANT], core=client_core,
                                               workdir=workdir)
            workers.append(publisher)
            await wait_service(service)
            yield Env(redis=redis_proc, service=service, loadgen=loadgen, publisher=publisher,
                      admin=admin, loop=loop, pinned=pin)
        finally:
            for worker in workers:
                await worker.stop()
            await admin.aclose()
