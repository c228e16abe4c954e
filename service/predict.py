"""``POST /v1/predict``: submit a run, or ask for its status or result, or cancel it.

The body is read with a bound before anything parses it: a body past 1 MiB is refused
with ``413`` as soon as that many bytes have arrived (or at once, from its Content-Length),
never buffered whole.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

import orjson
from aiohttp import web

from runlog.errors import IdempotencyKeyReused as LogKeyReused
from runlog.errors import RunExists as LogRunExists
from runlog.ids import is_valid_run_id

from .appkeys import LIFECYCLE, READER
from .errors import (
    IdempotencyKeyReused,
    InvalidAction,
    InvalidJson,
    InvalidRequest,
    PayloadTooLarge,
    RunExists,
)
from .lifecycle import SubmitOutcome
from .results import RESULT_LIMIT_MAX, cursor_position, result_page
from .runs import cancel, header_tenant, now_us, run_response, tenant_run

MAX_BODY_BYTES = 1024 * 1024
IDEMPOTENCY_HEADER = "Idempotency-Key"
ACTIONS = ("submit", "status", "result", "cancel")


async def read_body(request: web.Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, or ``413`` once it passes ``limit`` bytes (read no further)."""
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"the request body is {length} bytes; at most {limit} are accepted")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the request body passes {limit} bytes; it is refused")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or ``400 invalid_json``."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidJson(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidJson(f"the request body must be a JSON object, got {type(value).__name__}")
    return value


def idempotency_digest(request: web.Request) -> str | None:
    """sha256 of the ``Idempotency-Key`` header, None without one; 400 if malformed."""
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    if not 1 <= len(key) <= 255 or not all("!" <= ch <= "~" for ch in key):
        raise InvalidRequest(
            f"the {IDEMPOTENCY_HEADER} header must be 1-255 visible ASCII characters"
        )
    return hashlib.sha256(key.encode()).hexdigest()


def body_digest(body: dict[str, Any]) -> str:
    """sha256 of the body's canonical JSON (sorted keys): key order and spacing do not count."""
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def field_run_id(body: dict[str, Any]) -> str | None:
    """The optional ``run_id`` field: a string of ``[A-Za-z0-9_-]{1,128}``."""
    value = body.get("run_id")
    if value is None:
        return None
    if not isinstance(value, str) or not is_valid_run_id(value):
        raise InvalidRequest("run_id must be a string of [A-Za-z0-9_-]{1,128}")
    return value


def required_run_id(body: dict[str, Any]) -> str:
    """The ``run_id`` field, which every action but submit needs."""
    run_id = field_run_id(body)
    if run_id is None:
        raise InvalidRequest("run_id is required: a string of [A-Za-z0-9_-]{1,128}")
    return run_id


def field_object(body: dict[str, Any], name: str, *, required: bool) -> dict[str, Any] | None:
    """An object-valued field, or 400 naming it."""
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, dict):
        what = "is required and must be" if value is None else "must be"
        raise InvalidRequest(f"{name} {what} a JSON object")
    return value


def field_limit(body: dict[str, Any]) -> int:
    """``limit`` for ``result``: an integer from 1 to 10000 (default 10000)."""
    value = body.get("limit")
    if value is None:
        return RESULT_LIMIT_MAX
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= RESULT_LIMIT_MAX:
        raise InvalidRequest(f"limit must be an integer from 1 to {RESULT_LIMIT_MAX}")
    return value


def field_cursor(body: dict[str, Any]) -> str:
    """``cursor`` for ``result``: a ``next_cursor`` from an earlier answer, or empty."""
    value = body.get("cursor")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidRequest("cursor must be a string (a next_cursor from an earlier result)")
    return value


def new_run_id() -> str:
    """A run id nobody will guess or repeat: ``r_`` and 128 random bits."""
    return "r_" + secrets.token_urlsafe(16)


async def predict(request: web.Request) -> web.Response:
    """``POST /v1/predict``: dispatch on ``action``."""
    tenant = header_tenant(request)
    body = parse_object(await read_body(request))
    action = body.get("action")
    if action is None or action == "submit":
        return await submit(request, tenant, body)
    if action not in ACTIONS:
        shown = action if isinstance(action, str) else type(action).__name__
        raise InvalidAction(f"action must be one of {', '.join(ACTIONS)}; got {shown[:64]!r}")
    run_id = required_run_id(body)
    if action == "status":
        return run_response(await tenant_run(request, run_id, tenant))
    if action == "cancel":
        return await cancel(request, run_id, tenant)
    return await result(request, tenant, run_id, body)


async def submit(request: web.Request, tenant: str, body: dict[str, Any]) -> web.Response:
    """Create the run ``queued`` and queue it: ``202`` with its object and Location."""
    key_digest = idempotency_digest(request)
    task_suite = field_object(body, "task_suite", required=True)
    metadata = field_object(body, "metadata", required=False)
    run_id = field_run_id(body) or new_run_id()
    stored: dict[str, Any] = {"run_id": run_id, "tenant": tenant, "task_suite": task_suite}
    if metadata is not None:
        stored["metadata"] = metadata
    try:
        done = await request.app[LIFECYCLE].submit(
            run_id,
            tenant,
            orjson.dumps(stored),
            idempotency_digest=key_digest,
            body_digest=body_digest(body),
        )
    except LogRunExists:
        raise RunExists(f"a run with run_id {run_id!r} exists") from None
    except LogKeyReused:
        raise IdempotencyKeyReused(
            f"this {IDEMPOTENCY_HEADER} was used within 24 h with another request body"
        ) from None
    meta = await tenant_run(request, done.run_id, tenant)
    location = f"/v1/runs/{done.run_id}"
    response = run_response(meta, status=202, extra={"events_url": f"{location}/events"})
    response.headers["Location"] = location
    if done.outcome is SubmitOutcome.REPLAYED:
        response.headers["Idempotent-Replayed"] = "true"
    return response


async def result(
    request: web.Request, tenant: str, run_id: str, body: dict[str, Any]
) -> web.Response:
    """The extract rows so far (or all of them once the run is over), page by page."""
    limit = field_limit(body)
    raw_cursor = field_cursor(body)
    meta = await tenant_run(request, run_id, tenant)
    after_n = cursor_position(raw_cursor, meta)
    page = await result_page(request.app[READER], meta, after_n, limit, now_us())
    return web.json_response(page, headers={"Cache-Control": "no-cache"})
