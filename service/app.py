"""The application factory: routes and the lifetimes of the Redis client and the hub."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from aiohttp import web
from aiohttp.abc import AbstractResolver

from .admission import Admission
from .appkeys import ADMISSION, HUB, LIFECYCLE, READER, SETTINGS, STORE, TICKETS, TOKENS, WEBHOOKS
from .auth import TokenTable
from .cors import Cors
from .durable.routes import add_durable_streams
from .errors import error_middleware
from .frame_cache import FrameCache
from .hub import Hub
from .lifecycle import Lifecycle
from .metrics import configure_metrics, metrics_view
from .openapi import openapi_view
from .pages import add_dashboard
from .predict import predict
from .requestlog import install as install_request_log
from .runs import cancel_run, get_run
from .server_header import drop_server_header
from .settings import Settings
from .store import LogReader
from .store_client import StoreClient
from .tickets import ticket_book
from .views import create_feed_ticket, create_ticket, health, ready, run_events, tenant_events
from .webhooks import routes as webhook_routes
from .webhooks.runtime import Webhooks, webhooks_context


def create_app(
    settings: Settings,
    tokens: TokenTable,
    redis_url: str,
    *,
    resolver_factory: Callable[[], AbstractResolver] | None = None,
) -> web.Application:
    """Build the app; no I/O happens until it starts (see the cleanup contexts).

    ``resolver_factory`` makes the DNS resolver webhooks check and connect with (tests
    hand in one that maps names as they please)."""
    drop_server_header()
    app = web.Application(middlewares=[error_middleware])
    app[SETTINGS] = settings
    app[ADMISSION] = Admission(settings.tenant_max_streams)
    app[TOKENS] = tokens
    app[TICKETS] = ticket_book(settings, tokens)
    cors = Cors(settings.cors_origins)
    cors.enable(app.router.add_get("/v1/runs/{run_id}/events", run_events))
    cors.enable(app.router.add_post("/v1/runs/{run_id}/tickets", create_ticket))
    cors.enable(app.router.add_get("/v1/events", tenant_events))
    cors.enable(app.router.add_post("/v1/events/tickets", create_feed_ticket))
    cors.install(app)
    app.router.add_get("/v1/runs/{run_id}", get_run)
    app.router.add_post("/v1/runs/{run_id}/cancel", cancel_run)
    app.router.add_post("/v1/predict", predict)
    app.router.add_get("/healthz", health)
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/openapi.json", openapi_view)
    install_request_log(app)
    configure_metrics(settings)
    add_dashboard(app)
    app.router.add_get("/readyz", ready)
    webhook_routes.add_routes(app)

    async def redis_and_hub(app: web.Application) -> AsyncIterator[None]:
        # A bounded pool for reads plus one pub/sub connection: the pod's connection count
        # is fixed whatever the number of streams.
        store = StoreClient(redis_url, settings.redis_max_connections)
        app[STORE] = store
        app[READER] = reader = LogReader(store)
        app[LIFECYCLE] = Lifecycle(store, settings)
        hub = Hub(
            redis_url,
            reader=reader,
            heartbeat_s=settings.heartbeat_s,
            stream_max_s=settings.stream_max_s,
            frames=FrameCache(settings.replay_cache_bytes),
            node_urls=store.node_urls,
        )
        app[HUB] = hub
        await hub.start()
        yield
        await hub.stop()
        await app[LIFECYCLE].aclose()
        await app[READER].aclose()
        await store.aclose()

    async def end_streams(app: web.Application) -> None:
        # Before the server stops: streams end at an event boundary so clients resume
        # elsewhere by cursor, instead of being cut mid-event.
        if HUB in app:
            app[HUB].end_all("shutdown")

    def publish_webhooks(hooks: Webhooks) -> None:
        app[WEBHOOKS] = hooks

    app.cleanup_ctx.append(redis_and_hub)
    add_durable_streams(app)
    # Every pod dispatches webhooks for every tenant of its token table (see docs/webhooks.md).
    app.cleanup_ctx.append(
        webhooks_context(
            settings,
            [tenant for tenant, _ in tokens.entries],
            lambda: app[STORE],
            publish_webhooks,
            resolver_factory,
        )
    )
    app.on_shutdown.append(end_streams)
    return app
