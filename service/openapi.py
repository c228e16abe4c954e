"""``GET /openapi.json``: the OpenAPI 3.1 document of the service, built here in Python.

``OPERATIONS`` describes every route of the API (the contract's, sections 3 and 6-10). The
served document holds exactly the operations the app's router has, so it never promises a
route this build lacks; ``tests/test_openapi.py`` fails on a route the router has and this
module does not describe, and schemathesis checks live answers against the schemas.

Paths are matched with their parameters' names ignored (``/v1/webhooks/{id}`` and
``/v1/webhooks/{webhook_id}`` are one path); HEAD (added by aiohttp to every GET) is not
listed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import orjson
from aiohttp import web

VERSION = "2.0.0"
_PARAM = re.compile(r"\{[^}]*\}")

JSON = "application/json"
SSE = "text/event-stream"

# -- reusable pieces -------------------------------------------------------------------

_RUN_ID = {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,128}$", "example": "r-example"}
_NULLABLE_STR = {"type": ["string", "null"]}
_PHASE = {
    "type": "string",
    "enum": ["queued", "running", "recovering", "complete", "halted", "cancelled"],
}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            }
        },
    },
    "Run": {
        "type": "object",
        "description": "The run object. Fields beyond run_id and phase appear as the API grows.",
        "required": ["run_id", "phase"],
        "properties": {
            "run_id": {"type": "string"},
            "phase": _PHASE,
            "created_at": _NULLABLE_STR,
            "updated_at": _NULLABLE_STR,
            "halt_class": _NULLABLE_STR,
            "events": {"type": "integer", "minimum": 0},
            "last_event_id": _NULLABLE_STR,
            "cancel_requested": {"type": "boolean"},
            "poll_after_ms": {
                "type": ["integer", "null"],
                "minimum": 0,
                "description": "the backoff hint; null once the run is terminal",
            },
            "steps": {"type": "integer", "minimum": 0},
            "rows": {"type": "integer", "minimum": 0},
            "events_url": {"type": "string"},
            "terminal_id": _NULLABLE_STR,
        },
    },
    "Event": {
        "type": "object",
        "required": ["event", "id", "data"],
        "properties": {
            "event": {"type": "string"},
            "id": {"type": ["string", "null"], "description": "null only for a gap event"},
            "data": {},
        },
    },
    "EventPage": {
        "type": "object",
        "required": ["run_id", "phase", "events", "next_cursor", "done"],
        "properties": {
            "run_id": {"type": "string"},
            "phase": {"type": "string"},
            "events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
            "next_cursor": {"type": "string"},
            "done": {"type": "boolean"},
        },
    },
    "Ready": {
        "type": "object",
        "required": ["ready"],
        "properties": {
            "ready": {"type": "boolean"},
            "reason": {"type": "string", "description": "why not: draining, or the store"},
        },
    },
    "FeedPage": {
        "type": "object",
        "required": ["tenant", "events", "next_cursor", "done"],
        "properties": {
            "tenant": {"type": "string"},
            "events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
            "next_cursor": {"type": "string"},
            "done": {"type": "boolean", "const": False},
        },
    },
    "FeedTicket": {
        "type": "object",
        "required": ["ticket", "expires_at"],
        "properties": {
            "ticket": {"type": "string"},
            "expires_at": {"type": "string"},
        },
    },
    "Ticket": {
        "type": "object",
        "required": ["ticket", "run_id", "expires_at"],
        "properties": {
            "ticket": {"type": "string"},
            "run_id": {"type": "string"},
            "expires_at": {"type": "string"},
        },
    },
    "Result": {
        "type": "object",
        "required": ["run_id", "phase", "done", "rows"],
        "properties": {
            "run_id": {"type": "string"},
            "phase": _PHASE,
            "halt_class": _NULLABLE_STR,
            "done": {"type": "boolean"},
            "rows": {"type": "array"},
            "next_cursor": _NULLABLE_STR,
            "poll_after_ms": {
                "type": ["integer", "null"],
                "minimum": 0,
                "description": "the backoff hint; null once the run is terminal",
            },
        },
    },
    "PredictRequest": {
        "type": "object",
        "description": "Chosen by action: submit (default), status, result, cancel.",
        "properties": {
            "action": {"type": "string", "enum": ["submit", "status", "result", "cancel"]},
            "task_suite": {"type": "object"},
            "run_id": _RUN_ID,
            "metadata": {"type": "object"},
            "cursor": {"type": "string"},
            "limit": {"type": "integer", "minimum": 1, "maximum": 10000},
        },
    },
    "WebhookRequest": {
        "type": "object",
        "required": ["url", "events"],
        "properties": {
            "url": {"type": "string", "format": "uri"},
            "events": {
                "type": "array",
                "items": {"type": "string", "enum": ["run.finished", "run.phase"]},
            },
        },
    },
    "Webhook": {
        "type": "object",
        "required": ["id", "url", "events"],
        "properties": {
            "id": {"type": "string"},
            "url": {"type": "string"},
            "events": {"type": "array", "items": {"type": "string"}},
            "secret": {"type": "string", "description": "whsec_...; in the 201 answer only"},
        },
    },
    "WebhookList": {
        "type": "object",
        "required": ["webhooks"],
        "properties": {
            "webhooks": {"type": "array", "items": {"$ref": "#/components/schemas/Webhook"}}
        },
    },
    "Deliveries": {
        "type": "object",
        "required": ["deliveries"],
        "properties": {"deliveries": {"type": "array", "items": {"type": "object"}}},
    },
    "Health": {"type": "object", "required": ["ok"], "properties": {"ok": {"type": "boolean"}}},
}

_STR = {"schema": {"type": "string"}}
_REQUEST_ID_HEADER = {
    "X-Request-Id": {
        "description": "The request's id (the client's X-Request-Id when sane, else a new one)",
        "required": True,
        "schema": {"type": "string"},
    }
}
_RETRY_AFTER = {"Retry-After": {"description": "whole seconds", "required": True, **_STR}}

_ERROR_TEXT = {
    400: "Bad input: invalid_run_id, invalid_cursor, invalid_limit, invalid_request, ...",
    401: "unauthorized: no or unknown X-Mantis-Token (or an invalid ticket)",
    404: "run_not_found (absent and another tenant's look the same) or not found",
    403: "forbidden: a producer's stale epoch (Durable Streams)",
    405: "method_not_allowed: e.g. a write to a read-only run log stream",
    409: "run_exists or run_finished; a Durable Streams conflict (content type, sequence, closed)",
    410: "gone: the offset is older than what the stream retains (Durable Streams)",
    413: "payload_too_large (body over 1 MiB)",
    422: "idempotency_key_reused",
    429: "too_many_streams: the tenant's open streams on this pod are at the limit",
    503: "unavailable: the store cannot be reached (or the pod is draining)",
}


def _error(status: int) -> dict[str, Any]:
    headers = dict(_REQUEST_ID_HEADER)
    if status in (429, 503):
        headers.update(_RETRY_AFTER)
    return {
        "description": _ERROR_TEXT[status],
        "headers": headers,
        "content": {JSON: {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _json(description: str, schema: dict[str, Any], **headers: Any) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {**_REQUEST_ID_HEADER, **headers},
        "content": {JSON: {"schema": schema}},
    }


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _empty(description: str, **headers: Any) -> dict[str, Any]:
    return {"description": description, "headers": {**_REQUEST_ID_HEADER, **headers}}


def _op(
    summary: str,
    responses: dict[int, dict[str, Any]],
    *,
    errors: Iterable[int] = (),
    params: Iterable[dict[str, Any]] = (),
    body: dict[str, Any] | None = None,
    secured: bool = True,
    tags: Iterable[str] = (),
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    answers = {str(code): spec for code, spec in responses.items()}
    for code in errors:
        answers[str(code)] = _error(code)
    op: dict[str, Any] = {"summary": summary, "responses": answers, "tags": list(tags)}
    params = list(params)
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = {"required": True, "content": {JSON: {"schema": body}}}
    op["security"] = [{"token": []}] if secured else []
    if extra:
        op.update(extra)
    return op


def _path(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


def _header(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": False, "schema": schema,
            "description": description}


_RUN_PARAM = _path("run_id", _RUN_ID)
_WEBHOOK_PARAM = _path("webhook_id", {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,128}$"})
_CURSOR_PARAMS = [
    _query("sse", {"type": "string", "enum": ["true", "false"]},
           "true: a text/event-stream answer (as does Accept: text/event-stream)"),
    _query("since", {"type": "string"},
           "resume cursor for a first connection: an event id or an ISO-8601 timestamp"),
    _query("limit", {"type": "integer", "minimum": 1, "maximum": 10000},
           "JSON page: at most this many events (default 1000)"),
    _header("Last-Event-ID", {"type": "string"}, "resume cursor; wins over since"),
]
# One server-sent event as a client parses it: data is the line of JSON, as text.
_SSE_EVENT = {
    "type": "object",
    "properties": {
        "event": {"type": "string"},
        "id": {"type": "string"},
        "data": {"type": "string", "description": "one line of JSON"},
        "retry": {"type": "integer"},
    },
}
_STREAM_200 = {
    "description": "A JSON page of events, or (sse=true / Accept: text/event-stream) a live "
    "SSE stream: retry:, then events with id:, : ping comments, ending after the terminal "
    "event or the soft limit. A stream that cannot be served now answers 200 with retry: "
    "and a ': unavailable' comment.",
    "headers": dict(_REQUEST_ID_HEADER),
    "content": {
        JSON: {"schema": _ref("EventPage")},
        SSE: {"schema": _SSE_EVENT},
    },
}
_PREFLIGHT = _op(
    "CORS preflight for the origins in MANTIS_CORS_ORIGINS",
    {204: _empty("Allowed methods and headers (CORS headers only for a listed origin)")},
    params=[_RUN_PARAM],
    secured=False,
    tags=["streaming"],
)
_FEED_STREAM_200 = {
    **_STREAM_200,
    "description": "A JSON page of the tenant's 'run' events, or (sse=true / Accept: "
    "text/event-stream) a live SSE stream of them; a feed never ends with a terminal event.",
    "content": {JSON: {"schema": _ref("FeedPage")}, SSE: {"schema": _SSE_EVENT}},
}
_FEED_PREFLIGHT = _op(
    "CORS preflight for the origins in MANTIS_CORS_ORIGINS",
    {204: _empty("Allowed methods and headers (CORS headers only for a listed origin)")},
    secured=False,
    tags=["streaming"],
)


def _asset(description: str, content_type: str) -> dict[str, Any]:
    return _op(
        description,
        {200: {"description": content_type, "headers": dict(_REQUEST_ID_HEADER),
               "content": {content_type: {"schema": {"type": "string"}}}}},
        secured=False,
        tags=["operations"],
    )


_STREAM_PATH = _path(
    "path", {"type": "string", "pattern": "^[A-Za-z0-9_.~-]+(/[A-Za-z0-9_.~-]+)*$"}
)


def _any_body(description: str, status: int = 200) -> dict[str, Any]:
    if status in (204, 304):
        return _empty(description)
    return {"description": description, "headers": dict(_REQUEST_ID_HEADER),
            "content": {"*/*": {"schema": {}}}}


def _durable(summary: str, answers: dict[int, str], errors: Iterable[int]) -> dict[str, Any]:
    """A Durable Streams operation: bodies in the stream's own content type (docs/durable-
    streams.md); the protocol's headers (Stream-Next-Offset, ...) are described there."""
    return _op(
        summary,
        {code: _any_body(text, code) for code, text in answers.items()},
        errors=errors,
        params=[_STREAM_PATH],
        tags=["durable-streams"],
        extra={"security": [{"token": []}, {"bearer": []}, {}]},
    )


_POLL_HEADERS = {
    "ETag": {"description": "changes whenever anything but the hint changes", **_STR},
    "Retry-After": {"description": "poll hint in whole seconds (not terminal runs)", **_STR},
}

OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("GET", "/v1/runs/{run_id}/events"): _op(
        "A run's events after a cursor: SSE stream or JSON page",
        {200: _STREAM_200, 204: _empty("The cursor is at or after the finished run's end")},
        errors=(400, 401, 404, 429, 503),
        params=[_RUN_PARAM, *_CURSOR_PARAMS,
                _query("ticket", {"type": "string"}, "a stream ticket instead of the token")],
        tags=["streaming"],
        extra={"security": [{"token": []}, {"ticket": []}]},
    ),
    ("OPTIONS", "/v1/runs/{run_id}/events"): _PREFLIGHT,
    ("POST", "/v1/runs/{run_id}/tickets"): _op(
        "A short-lived, read-only ticket for this run's events (for EventSource URLs)",
        {201: _json("The ticket", _ref("Ticket"))},
        errors=(400, 401, 404, 503),
        params=[_RUN_PARAM],
        tags=["streaming"],
    ),
    ("OPTIONS", "/v1/runs/{run_id}/tickets"): _PREFLIGHT,
    ("GET", "/v1/runs/{run_id}"): _op(
        "The cheap poll: the run object, with a backoff hint while it is not terminal",
        {
            200: _json("The run object", _ref("Run"), **_POLL_HEADERS),
            304: _empty("If-None-Match matched the current ETag", **_POLL_HEADERS),
        },
        errors=(400, 401, 404, 503),
        params=[_RUN_PARAM, _header("If-None-Match", {"type": "string"}, "a previous ETag")],
        tags=["runs"],
    ),
    ("POST", "/v1/runs/{run_id}/cancel"): _op(
        "Cancel a run (queued: at once; running: its runner is asked)",
        {
            200: _json("Cancelled", _ref("Run")),
            202: _json("Cancel requested; the runner finishes the run", _ref("Run")),
        },
        errors=(400, 401, 404, 409, 503),
        params=[_RUN_PARAM],
        tags=["runs"],
    ),
    ("POST", "/v1/predict"): _op(
        "Submit a run, or ask for its status, result or cancellation (by action)",
        {
            200: _json("status, result or cancel", {"oneOf": [_ref("Run"), _ref("Result")]}),
            202: _json(
                "submitted (or cancel requested)",
                _ref("Run"),
                Location={"description": "/v1/runs/{run_id}", **_STR},
            ),
        },
        errors=(400, 401, 404, 409, 413, 422, 503),
        params=[_header("Idempotency-Key", {"type": "string", "pattern": "^[!-~]{1,255}$"},
                        "a retry with the same key and body gets the first answer")],
        body=_ref("PredictRequest"),
        tags=["runs"],
    ),
    ("GET", "/v1/events"): _op(
        "The tenant's run lifecycle feed: an event 'run' per change, same cursor rules",
        {200: _FEED_STREAM_200},
        errors=(400, 401, 429, 503),
        params=[*_CURSOR_PARAMS,
                _query("ticket", {"type": "string"}, "a feed ticket instead of the token")],
        tags=["streaming"],
        extra={"security": [{"token": []}, {"ticket": []}]},
    ),
    ("OPTIONS", "/v1/events"): _FEED_PREFLIGHT,
    ("POST", "/v1/events/tickets"): _op(
        "A short-lived, read-only ticket for the tenant's feed (for EventSource in a browser)",
        {201: _json("The ticket", _ref("FeedTicket"))},
        errors=(401,),
        tags=["streaming"],
    ),
    ("OPTIONS", "/v1/events/tickets"): _FEED_PREFLIGHT,
    ("POST", "/v1/webhooks"): _op(
        "Register a webhook endpoint (the secret is shown this once)",
        {201: _json("The endpoint with its secret", _ref("Webhook"))},
        errors=(400, 401, 503),
        body=_ref("WebhookRequest"),
        tags=["webhooks"],
    ),
    ("GET", "/v1/webhooks"): _op(
        "The tenant's webhook endpoints, without secrets",
        {200: _json("The endpoints", _ref("WebhookList"))},
        errors=(401, 503),
        tags=["webhooks"],
    ),
    ("DELETE", "/v1/webhooks/{webhook_id}"): _op(
        "Remove a webhook endpoint",
        {204: _empty("Removed")},
        errors=(400, 401, 404, 503),
        params=[_WEBHOOK_PARAM],
        tags=["webhooks"],
    ),
    ("GET", "/v1/webhooks/{webhook_id}/deliveries"): _op(
        "Recent deliveries of an endpoint, with attempts, statuses and next retry time",
        {200: _json("The deliveries", _ref("Deliveries"))},
        errors=(400, 401, 404, 503),
        params=[_WEBHOOK_PARAM],
        tags=["webhooks"],
    ),
    ("GET", "/dashboard"): _op(
        "The ops dashboard page (static, works offline; signs in with a token in the tab)",
        {200: {"description": "HTML", "headers": dict(_REQUEST_ID_HEADER),
               "content": {"text/html": {"schema": {"type": "string"}}}}},
        secured=False,
        tags=["operations"],
    ),
    ("GET", "/dashboard/"): _op(
        "Redirects to /dashboard",
        {308: _empty("Permanent redirect", Location={"description": "/dashboard", **_STR})},
        secured=False,
        tags=["operations"],
    ),
    ("GET", "/dashboard/app.js"): _asset("The dashboard's script", "text/javascript"),
    ("GET", "/dashboard/app.css"): _asset("The dashboard's style sheet", "text/css"),
    ("GET", "/dashboard/favicon.svg"): _asset("The dashboard's icon", "image/svg+xml"),
    ("PUT", "/v1/stream/{path}"): _durable(
        "Create a durable stream (idempotent); Content-Type, Stream-TTL or Stream-Expires-At",
        {200: "It exists with the same settings", 201: "Created"},
        (400, 401, 405, 409, 413, 503),
    ),
    ("POST", "/v1/stream/{path}"): _durable(
        "Append to a stream (JSON mode flattens one array level); Stream-Closed closes it; "
        "Producer-Id, Producer-Epoch, Producer-Seq make retries exactly-once",
        {200: "Appended (a producer's first write)", 204: "Appended, or a duplicate"},
        (400, 401, 403, 404, 405, 409, 410, 413, 503),
    ),
    ("GET", "/v1/stream/{path}"): _durable(
        "Read from an offset (-1, now, or a Stream-Next-Offset); live=long-poll or live=sse",
        {200: "Data (or an SSE stream)", 204: "Up to date, nothing new", 304: "Not modified"},
        (400, 401, 404, 410, 503),
    ),
    ("DELETE", "/v1/stream/{path}"): _durable(
        "Delete a stream", {204: "Deleted"}, (400, 401, 404, 405, 503)
    ),
    ("OPTIONS", "/v1/stream/{path}"): _op(
        "CORS preflight of the Durable Streams routes",
        {204: _empty("Allowed methods and headers")},
        params=[_STREAM_PATH],
        secured=False,
        tags=["durable-streams"],
    ),
    ("GET", "/v1/stream/runs/{run_id}"): _op(
        "A run's log read as a durable stream (read-only, JSON mode, closed at the terminal "
        "event); same offsets and live modes",
        {code: _any_body(text, code) for code, text in
         {200: "Events", 204: "Up to date", 304: "Not modified"}.items()},
        errors=(400, 401, 404, 503),
        params=[_RUN_PARAM],
        tags=["durable-streams"],
        extra={"security": [{"token": []}, {"bearer": []}]},
    ),
    ("GET", "/healthz"): _op(
        "Liveness: the process serves",
        {200: _json("Alive", _ref("Health"))},
        errors=(503,),
        secured=False,
        tags=["operations"],
    ),
    ("GET", "/readyz"): _op(
        "Readiness: 200 when the store answers and the pod is not draining",
        {200: _json("Ready", _ref("Ready")),
         503: _json("Not ready: draining, or the store does not answer", _ref("Ready"))},
        secured=False,
        tags=["operations"],
    ),
    ("GET", "/metrics"): _op(
        "Prometheus metrics (text format 0.0.4)",
        {200: {"description": "Metrics", "headers": dict(_REQUEST_ID_HEADER),
               "content": {"text/plain": {"schema": {"type": "string"}}}}},
        secured=False,
        tags=["operations"],
    ),
    ("GET", "/openapi.json"): _op(
        "This document",
        {200: _json("OpenAPI 3.1", {"type": "object"})},
        secured=False,
        tags=["operations"],
    ),
}


def shape(path: str) -> str:
    """A path with its parameter names dropped, for comparing templates."""
    return _PARAM.sub("{}", path)


def _canonical(resource: web.AbstractResource) -> str:
    if isinstance(resource, web.StaticResource):
        return resource.canonical.rstrip("/") + "/{filename}"
    return resource.canonical


def router_operations(app: web.Application) -> set[tuple[str, str]]:
    """(method, path template) of every route the app serves, HEAD left out."""
    found = set()
    for resource in app.router.resources():
        for route in resource:
            if route.method in ("HEAD", "*"):
                continue
            found.add((route.method, _canonical(resource)))
    return found


def undocumented(app: web.Application) -> set[tuple[str, str]]:
    """Routes the app serves that ``OPERATIONS`` does not describe."""
    known = {(method, shape(path)) for method, path in OPERATIONS}
    return {(m, p) for m, p in router_operations(app) if (m, shape(p)) not in known}


def build_document(app: web.Application) -> dict[str, Any]:
    """The OpenAPI 3.1 document of exactly the operations this app serves."""
    served = {(method, shape(path)) for method, path in router_operations(app)}
    paths: dict[str, dict[str, Any]] = {}
    for (method, path), operation in OPERATIONS.items():
        if (method, shape(path)) in served:
            paths.setdefault(path, {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Mantis runs API",
            "version": VERSION,
            "description": "Runs, their resumable event streams, webhooks and operations. "
            "Errors are JSON {\"error\": {\"code\", \"message\"}}; every response carries "
            "X-Request-Id.",
        },
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "token": {"type": "apiKey", "in": "header", "name": "X-Mantis-Token"},
                "ticket": {"type": "apiKey", "in": "query", "name": "ticket"},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
        },
    }


async def openapi_view(request: web.Request) -> web.Response:
    """``GET /openapi.json`` (built per request: a few dozen microseconds, rarely asked)."""
    return web.Response(body=orjson.dumps(build_document(request.app)), content_type=JSON)
