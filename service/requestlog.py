"""Request ids and the access log: one JSON line per answered request.

Each request gets an id: a sane ``X-Request-Id`` from the client (or the load balancer) is
kept, anything else is replaced by a fresh one. It is bound to every log line written while
the request is served and returned in the response's ``X-Request-Id`` header (a stream's
too: the header is added as the response is prepared).

The access line has the request id, method, path *without the query string* (a query may
carry a stream ticket), status, duration and tenant. No header is logged: tokens, tickets,
signatures and secrets never reach a log line from here.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid

from aiohttp import web

from runlog.logs import bind_fields, unbind

from . import metrics
from .appkeys import REQUEST_ID, TENANT
from .errors import Handler

access_log = logging.getLogger("mantis.access")

HEADER = "X-Request-Id"
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# A path is logged up to this length: a run id is at most 128 characters.
_MAX_PATH = 256
# Status for the access line of a request whose client went away before an answer.
CLIENT_CLOSED = 499


def request_id_for(header: str | None) -> str:
    """The client's id when it is a short token, else a fresh one."""
    if header is not None and _SANE_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex


def note_tenant(request: web.Request, tenant: str) -> None:
    """Record who the request authenticated as, for the access line."""
    request[TENANT] = tenant


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def request_log_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bind a request id, answer, then write the access line and count the request."""
    request_id = request_id_for(request.headers.get(HEADER))
    request[REQUEST_ID] = request_id
    token = bind_fields(request_id=request_id)
    start = time.perf_counter()
    status = 500
    streaming = False
    try:
        response = await handler(request)
        status = response.status
        streaming = response.content_type == "text/event-stream"
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = CLIENT_CLOSED
        raise
    finally:
        seconds = time.perf_counter() - start
        metrics.record_http(
            request.method, _route(request), status, None if streaming else seconds
        )
        access_log.info(
            "%s %s %d",
            request.method,
            request.path[:_MAX_PATH],
            status,
            extra={
                "method": request.method,
                "path": request.path[:_MAX_PATH],
                "status": status,
                "duration_ms": round(seconds * 1000, 3),
                "tenant": request.get(TENANT),
                "stream": streaming,
            },
        )
        unbind(token)


async def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: every response names its request id."""
    request_id = request.get(REQUEST_ID)
    if request_id is not None:
        response.headers[HEADER] = request_id


def install(app: web.Application) -> None:
    """Add the middleware (outermost) and the response header hook."""
    app.middlewares.insert(0, request_log_middleware)
    app.on_response_prepare.append(add_request_id)
