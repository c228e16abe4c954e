"""``/v1/webhooks``: register, list and delete endpoints; list an endpoint's deliveries."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from runlog.connect import is_cluster

from ..appkeys import STORE, WEBHOOKS
from ..errors import InvalidRequest
from ..views import tenant_of
from .errors import InvalidJson, PayloadTooLarge, WebhookLimit, WebhookNotFound, WebhooksUnavailable
from .guard import InvalidWebhookUrl
from .model import EVENT_TYPES, Endpoint, new_endpoint_id, new_secret
from .store import MAX_ENDPOINTS, RECENT_MAX, TooManyEndpoints

MAX_BODY = 64 * 1024
ENDPOINT_ID_RE = re.compile(r"wh_[0-9a-f]{16}")
DEFAULT_DELIVERIES = 50
_FIELDS = {"url", "events"}


def _now_iso() -> str:
    stamp = datetime.now(tz=UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


async def _body(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise PayloadTooLarge(f"the body may be at most {MAX_BODY} bytes")
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise PayloadTooLarge(f"the body may be at most {MAX_BODY} bytes")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidJson("the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise InvalidJson("the body must be a JSON object")
    return body


def _events(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise InvalidRequest(f"events: a non-empty list drawn from {', '.join(EVENT_TYPES)}")
    for item in value:
        if item not in EVENT_TYPES:
            shown = repr(item)[:40] if isinstance(item, str) else type(item).__name__
            raise InvalidRequest(f"events: unknown event type {shown}; known: "
                                 f"{', '.join(EVENT_TYPES)}")
    return tuple(dict.fromkeys(value))


def _endpoint_id(request: web.Request) -> str:
    endpoint_id = request.match_info["webhook_id"]
    if ENDPOINT_ID_RE.fullmatch(endpoint_id) is None:
        raise WebhookNotFound("no such webhook")
    return endpoint_id


async def create_webhook(request: web.Request) -> web.Response:
    """``POST /v1/webhooks``: 201 with the endpoint and its secret (shown only here)."""
    tenant = tenant_of(request)
    body = await _body(request)
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise InvalidRequest(f"{unknown[0][:40]}: unknown field (known: url, events)")
    raw_url = body.get("url")
    if not isinstance(raw_url, str) or not raw_url:
        raise InvalidRequest("url: a string is required")
    events = _events(body.get("events"))
    hooks = request.app[WEBHOOKS]
    if is_cluster(await request.app[STORE].get()):
        raise WebhooksUnavailable("webhooks need the tenant feed, which Redis Cluster lacks")
    try:
        url = await hooks.policy.check_url(raw_url, hooks.resolver)
    except InvalidWebhookUrl as exc:
        raise InvalidRequest(str(exc)) from None
    endpoint = Endpoint(
        id=new_endpoint_id(),
        url=str(url),
        events=events,
        secret=new_secret(),
        created_at=_now_iso(),
    )
    try:
        await hooks.store.register(tenant, endpoint)
    except TooManyEndpoints:
        raise WebhookLimit(f"a tenant may have at most {MAX_ENDPOINTS} webhooks") from None
    hooks.added()
    return web.json_response(
        {**endpoint.public(), "secret": endpoint.secret},
        status=201,
        headers={"Location": f"/v1/webhooks/{endpoint.id}"},
    )


async def list_webhooks(request: web.Request) -> web.Response:
    """``GET /v1/webhooks``: the tenant's endpoints, without secrets."""
    tenant = tenant_of(request)
    found = await request.app[WEBHOOKS].store.endpoints(tenant)
    return web.json_response({"webhooks": [e.public() for e in found]})


async def delete_webhook(request: web.Request) -> web.Response:
    """``DELETE /v1/webhooks/{id}``: 204; its pending deliveries are dropped."""
    tenant = tenant_of(request)
    if not await request.app[WEBHOOKS].store.unregister(tenant, _endpoint_id(request)):
        raise WebhookNotFound("no such webhook")
    return web.Response(status=204)


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return DEFAULT_DELIVERIES
    if not raw.isdigit() or not 1 <= int(raw) <= RECENT_MAX:
        raise InvalidRequest(f"limit: an integer from 1 to {RECENT_MAX}")
    return int(raw)


async def list_deliveries(request: web.Request) -> web.Response:
    """``GET /v1/webhooks/{id}/deliveries``: recent deliveries, newest first."""
    tenant = tenant_of(request)
    endpoint_id = _endpoint_id(request)
    limit = _limit(request)
    store = request.app[WEBHOOKS].store
    if await store.endpoint(tenant, endpoint_id) is None:
        raise WebhookNotFound("no such webhook")
    found = await store.deliveries(tenant, endpoint_id, limit)
    return web.json_response({"webhook_id": endpoint_id, "deliveries": found})


def add_routes(app: web.Application) -> None:
    """The webhook routes (token auth only: tickets are for streams)."""
    app.router.add_post("/v1/webhooks", create_webhook)
    app.router.add_get("/v1/webhooks", list_webhooks)
    app.router.add_delete("/v1/webhooks/{webhook_id}", delete_webhook)
    app.router.add_get("/v1/webhooks/{webhook_id}/deliveries", list_deliveries)
