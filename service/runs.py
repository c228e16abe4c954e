"""Run-level endpoints: a run's state, and the one lifecycle move the service makes itself.

``POST /v1/runs/{run_id}/cancel`` is how an API pod cancels a run that no runner holds yet
(or one it wants stopped); it writes the ``cancelled`` phase and the terminal record through
the same atomic script a runner uses. It needs the tenant token: stream tickets are
read-only and never reach this module.
"""

from __future__ import annotations

from aiohttp import web

from runlog.calls import LogLimits
from runner_bridge import AsyncBridge, BridgeError

from .appkeys import READER, SETTINGS, STORE, TOKENS
from .errors import Conflict, Unauthorized
from .requestlog import note_tenant
from .views import load_run, run_id_of


def header_tenant(request: web.Request) -> str:
    """The tenant of the X-Mantis-Token header (tickets are not accepted here)."""
    tenant = request.app[TOKENS].tenant_for(request.headers.get("X-Mantis-Token"))
    if tenant is None:
        raise Unauthorized("a valid X-Mantis-Token header is required")
    note_tenant(request, tenant)
    return tenant


async def get_run(request: web.Request) -> web.Response:
    """``GET /v1/runs/{run_id}``: phase, timestamps, halt_class."""
    tenant = header_tenant(request)
    state = await load_run(request, run_id_of(request), tenant)
    return web.json_response(state.public())


async def cancel_run(request: web.Request) -> web.Response:
    """``POST /v1/runs/{run_id}/cancel``: move the run to ``cancelled`` (409 if it cannot)."""
    tenant = header_tenant(request)
    run_id = run_id_of(request)
    await load_run(request, run_id, tenant)
    settings = request.app[SETTINGS]
    limits = LogLimits(maxlen=settings.stream_maxlen, retention_s=settings.retention_s)
    bridge = AsyncBridge(await request.app[STORE].get(), limits=limits)
    try:
        event_id = await bridge.run(run_id).finish("cancelled")
    except BridgeError as exc:  # already terminal, or gone meanwhile
        raise Conflict(str(exc)) from None
    state = await request.app[READER].state(run_id)
    body = state.public() if state is not None else {"run_id": run_id, "phase": "cancelled"}
    return web.json_response({**body, "terminal_id": event_id})
