"""Durable Streams routes on the service: ``/v1/stream/{path}`` (and run logs as streams)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from ..appkeys import DURABLE_STORE, HUB, LIVE_STREAMS, SETTINGS, STORE
from .live import LiveStreams
from .reads import head_stream, read_stream
from .runs_view import head_run_stream, read_run_stream
from .store import DurableStore
from .writes import append_stream, create_stream, delete_stream

ALLOW_METHODS = "GET, HEAD, POST, PUT, DELETE, OPTIONS"
ALLOW_HEADERS = (
    "Content-Type, Authorization, X-Mantis-Token, If-None-Match, Stream-Seq, Stream-TTL, "
    "Stream-Expires-At, Stream-Closed, Producer-Id, Producer-Epoch, Producer-Seq"
)
EXPOSE_HEADERS = (
    "Stream-Next-Offset, Stream-Cursor, Stream-Up-To-Date, Stream-Closed, Stream-TTL, "
    "Stream-Expires-At, Stream-SSE-Data-Encoding, Producer-Epoch, Producer-Seq, "
    "Producer-Expected-Seq, Producer-Received-Seq, ETag, Location, Content-Type"
)
PREFIX = "/v1/stream/"


def _origin_allowed(request: web.Request) -> str | None:
    origin = request.headers.get("Origin")
    if not origin:
        return None
    allowed = request.app[SETTINGS].cors_origins
    if "*" in allowed or origin.rstrip("/") in allowed:
        return origin
    return None


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """Browser safety headers on every stream response, errors included."""
    if not request.path.startswith(PREFIX):
        return
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Cross-Origin-Resource-Policy", "cross-origin")
    origin = _origin_allowed(request)
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
        response.headers.add("Vary", "Origin")


async def preflight(request: web.Request) -> web.Response:
    """CORS preflight: the methods and headers the protocol uses (origins per
    ``MANTIS_CORS_ORIGINS``, whose ``*`` admits any)."""
    return web.Response(
        status=204,
        headers={
            "Access-Control-Allow-Methods": ALLOW_METHODS,
            "Access-Control-Allow-Headers": ALLOW_HEADERS,
            "Access-Control-Max-Age": "600",
        },
    )


def add_durable_streams(app: web.Application) -> None:
    """Register the routes, and the pod's durable-stream store and live fan-out."""
    router = app.router
    runs = router.add_resource(PREFIX + "runs/{run_id}")
    runs.add_route("GET", read_run_stream)
    runs.add_route("HEAD", head_run_stream)
    streams = router.add_resource(PREFIX + "{path:.+}")
    streams.add_route("PUT", create_stream)
    streams.add_route("POST", append_stream)
    streams.add_route("GET", read_stream)
    streams.add_route("HEAD", head_stream)
    streams.add_route("DELETE", delete_stream)
    streams.add_route("OPTIONS", preflight)
    app.on_response_prepare.append(_on_prepare)

    async def durable_state(app: web.Application) -> AsyncIterator[None]:
        # After the store and hub exist (this context is appended after theirs).
        app[DURABLE_STORE] = DurableStore(app[STORE])
        app[LIVE_STREAMS] = LiveStreams(app[HUB])
        yield

    async def end_live_reads(app: web.Application) -> None:
        if LIVE_STREAMS in app:
            app[LIVE_STREAMS].end_all()

    app.cleanup_ctx.append(durable_state)
    app.on_shutdown.append(end_live_reads)
