"""The application factory: routes and the lifetimes of the Redis client and the hub."""

from __future__ import annotations

from collections.abc import AsyncIterator

import redis.asyncio as aredis
from aiohttp import web

from .appkeys import HUB, READER, REDIS, SETTINGS, TOKENS
from .auth import TokenTable
from .errors import error_middleware
from .hub import Hub
from .settings import Settings
from .store import LogReader
from .views import health, run_events


def redis_client(url: str, max_connections: int) -> aredis.Redis:
    """A pod's Redis client: a bounded pool, so the pod's connection count is fixed."""
    pool = aredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=5, protocol=2, health_check_interval=30
    )
    return aredis.Redis(connection_pool=pool)


def create_app(settings: Settings, tokens: TokenTable, redis_url: str) -> web.Application:
    """Build the app; no I/O happens until it starts (see the cleanup contexts)."""
    app = web.Application(middlewares=[error_middleware])
    app[SETTINGS] = settings
    app[TOKENS] = tokens
    app.router.add_get("/v1/runs/{run_id}/events", run_events)
    app.router.add_get("/healthz", health)

    async def redis_and_hub(app: web.Application) -> AsyncIterator[None]:
        client = redis_client(redis_url, settings.redis_max_connections)
        app[REDIS] = client
        app[READER] = LogReader(client)
        hub = Hub(client, heartbeat_s=settings.heartbeat_s, stream_max_s=settings.stream_max_s)
        app[HUB] = hub
        await hub.start()
        yield
        await hub.stop()
        await client.aclose()

    async def end_streams(app: web.Application) -> None:
        # Before the server stops: streams end at an event boundary so clients resume
        # elsewhere by cursor, instead of being cut mid-event.
        if HUB in app:
            app[HUB].end_all("shutdown")

    app.cleanup_ctx.append(redis_and_hub)
    app.on_shutdown.append(end_streams)
    return app
