"""Run-level endpoints: the cheap poll ``GET /v1/runs/{run_id}`` and the cancel route.

Both answer with the one run object (``runobject.run_object``); ``POST /v1/predict`` uses
the same helpers here for its ``status`` and ``cancel`` actions.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from runlog.errors import RunNotFound as LogRunNotFound
from runlog.errors import RunTerminal

from .appkeys import LIFECYCLE, READER, TOKENS
from .errors import RunFinished, RunNotFound, Unauthorized
from .lifecycle import CancelOutcome
from .requestlog import note_tenant
from .runobject import RunMeta, etag, etag_matches, hint_headers, poll_hint, run_object
from .views import run_id_of


def header_tenant(request: web.Request) -> str:
    """The tenant of the X-Mantis-Token header (tickets are not accepted here)."""
    tenant = request.app[TOKENS].tenant_for(request.headers.get("X-Mantis-Token"))
    if tenant is None:
        raise Unauthorized("a valid X-Mantis-Token header is required")
    note_tenant(request, tenant)
    return tenant


def now_us() -> int:
    """The wall clock in microseconds (``updated_at`` is wall-clock time too)."""
    return time.time_ns() // 1000


async def tenant_run(request: web.Request, run_id: str, tenant: str) -> RunMeta:
    """The run's meta in one command, or 404 when absent or another tenant's."""
    meta = await request.app[READER].meta(run_id)
    if meta is None or meta.tenant != tenant:
        raise RunNotFound(f"no run {run_id!r} for this tenant")
    return meta


def run_response(
    meta: RunMeta, *, status: int = 200, extra: dict[str, Any] | None = None
) -> web.Response:
    """The run object as a response, with the poll hint header while the run goes on."""
    body = run_object(meta, now_us())
    if extra:
        body.update(extra)
    headers = {"Cache-Control": "no-cache", **hint_headers(body["poll_after_ms"])}
    # orjson: this is the hot path of polling, and the object is all plain values.
    return web.Response(
        body=orjson.dumps(body), status=status, headers=headers, content_type="application/json"
    )


async def get_run(request: web.Request) -> web.Response:
    """``GET /v1/runs/{run_id}``: the run object in one Redis command, ``304`` when unchanged."""
    tenant = header_tenant(request)
    meta = await tenant_run(request, run_id_of(request), tenant)
    tag = etag(meta)
    if etag_matches(request.headers.get("If-None-Match"), tag):
        hint = poll_hint(meta, now_us())
        headers = {"ETag": tag, "Cache-Control": "no-cache", **hint_headers(hint)}
        return web.Response(status=304, headers=headers)
    response = run_response(meta)
    response.headers["ETag"] = tag
    return response


async def cancel(request: web.Request, run_id: str, tenant: str) -> web.Response:
    """Cancel: ``200`` cancelled (was queued), ``202`` requested (running), ``409`` if over."""
    await tenant_run(request, run_id, tenant)
    try:
        outcome = await request.app[LIFECYCLE].cancel(run_id)
    except RunTerminal:
        raise RunFinished(f"run {run_id!r} has already finished") from None
    except LogRunNotFound:  # expired between the two reads
        raise RunNotFound(f"no run {run_id!r} for this tenant") from None
    meta = await tenant_run(request, run_id, tenant)
    return run_response(meta, status=200 if outcome is CancelOutcome.CANCELLED else 202)


async def cancel_run(request: web.Request) -> web.Response:
    """``POST /v1/runs/{run_id}/cancel``: the same as ``{"action": "cancel"}``."""
    tenant = header_tenant(request)
    return await cancel(request, run_id_of(request), tenant)
