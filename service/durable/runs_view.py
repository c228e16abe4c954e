"""Run logs read as durable streams: ``GET /v1/stream/runs/{run_id}`` (placeholder)."""

from __future__ import annotations

from aiohttp import web

from .errors import StreamNotFound


async def read_run_stream(request: web.Request) -> web.StreamResponse:
    raise StreamNotFound("no such run")


async def head_run_stream(request: web.Request) -> web.StreamResponse:
    raise StreamNotFound("no such run")
