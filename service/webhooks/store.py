"""Webhook endpoints and deliveries in Redis: every write is one script of ``scripts.py``."""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from runlog import keys
from runlog.calls import Call
from runlog.pipeline import AsyncScriptPipeline

from ..store_client import StoreClient
from . import scripts
from .model import Endpoint, delivery_view

MAX_ENDPOINTS = 20
RECENT_MAX = 100
INGEST_BATCH = 200


class TooManyEndpoints(Exception):
    """The tenant has ``MAX_ENDPOINTS`` endpoints already."""


@dataclass(frozen=True, slots=True)
class Claim:
    """A delivery this pod may attempt now, fenced by ``claim``."""

    tenant: str
    delivery_id: str
    claim: int
    endpoint: Endpoint
    event_type: str
    data: bytes
    t_us: int


def now_ms() -> int:
    return int(time.time() * 1000)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class WebhookStore:
    """Reads and writes a tenant's webhooks; takes the pod's ``StoreClient``."""

    def __init__(self, store: StoreClient) -> None:
        self._store = store
        self._pipeline: AsyncScriptPipeline | None = None
        self._pipeline_client: Any = None

    async def _run(self, calls: Sequence[Call]) -> list[Any]:
        client = await self._store.get()
        if self._pipeline is None or self._pipeline_client is not client:
            self._pipeline, self._pipeline_client = AsyncScriptPipeline(client), client
        return await self._pipeline.execute(calls)

    async def _one(self, call: Call) -> Any:
        (reply,) = await self._run([call])
        if isinstance(reply, Exception):
            raise reply
        return reply

    # Endpoints ---------------------------------------------------------------------------

    @staticmethod
    def register_call(tenant: str, endpoint: Endpoint) -> Call:
        """Store ``endpoint`` at the tenant feed's current position (``scripts.REGISTER``)."""
        return (
            scripts.REGISTER,
            [
                keys.webhooks_key(tenant),
                keys.feed_keys(tenant)[0],
                keys.webhook_cursor_key(tenant),
                keys.webhook_phases_key(tenant),
            ],
            [endpoint.id, endpoint.stored(), MAX_ENDPOINTS],
        )

    async def register(self, tenant: str, endpoint: Endpoint) -> None:
        """Store ``endpoint``; ``TooManyEndpoints`` past ``MAX_ENDPOINTS``."""
        try:
            await self._one(self.register_call(tenant, endpoint))
        except ResponseError as exc:
            if str(exc).startswith("LIMIT"):
                raise TooManyEndpoints() from None
            raise

    async def endpoints(self, tenant: str) -> list[Endpoint]:
        client = await self._store.get()
        raw = await client.hgetall(keys.webhooks_key(tenant))
        found = [Endpoint.from_json(value) for value in raw.values()]
        return sorted(found, key=lambda e: (e.created_at, e.id))

    async def endpoint(self, tenant: str, endpoint_id: str) -> Endpoint | None:
        client = await self._store.get()
        raw = await client.hget(keys.webhooks_key(tenant), endpoint_id)
        return None if raw is None else Endpoint.from_json(raw)

    async def unregister(self, tenant: str, endpoint_id: str) -> bool:
        call: Call = (
            scripts.UNREGISTER,
            [
                keys.webhooks_key(tenant),
                keys.webhook_recent_key(tenant, endpoint_id),
                keys.webhook_due_key(tenant, endpoint_id),
            ],
            [endpoint_id, keys.webhook_delivery_prefix(tenant)],
        )
        return bool(await self._one(call))

    async def deliveries(self, tenant: str, endpoint_id: str, limit: int) -> list[dict[str, Any]]:
        """The endpoint's most recent deliveries, newest first."""
        client = await self._store.get()
        ids = await client.lrange(
            keys.webhook_recent_key(tenant, endpoint_id), 0, limit - 1
        )
        names = [_text(i) for i in ids]
        if not names:
            return []
        pipe = client.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(keys.webhook_delivery_key(tenant, name))
        rows = await pipe.execute()
        # A finished delivery's hash expires (retention) before the list forgets its id.
        return [delivery_view(n, f) for n, f in zip(names, rows, strict=True) if f]

    async def pending(self, tenants: Sequence[str]) -> int:
        """Deliveries of ``tenants`` waiting for an attempt (or in one): the due sets' sizes.

        Two round trips whatever the number of endpoints: the endpoint ids, then the sizes.
        """
        if not tenants:
            return 0
        client = await self._store.get()
        pipe = client.pipeline(transaction=False)
        for tenant in tenants:
            pipe.hkeys(keys.webhooks_key(tenant))
        ids_per_tenant = await pipe.execute()
        pipe = client.pipeline(transaction=False)
        for tenant, ids in zip(tenants, ids_per_tenant, strict=True):
            for endpoint_id in ids:
                pipe.zcard(keys.webhook_due_key(tenant, _text(endpoint_id)))
        return sum(int(n) for n in await pipe.execute())

    # The dispatcher's steps --------------------------------------------------------------

    async def tenants_with_endpoints(self, tenants: Sequence[str]) -> list[str]:
        """Those of ``tenants`` that have at least one endpoint (one round trip)."""
        if not tenants:
            return []
        client = await self._store.get()
        pipe = client.pipeline(transaction=False)
        for tenant in tenants:
            pipe.hlen(keys.webhooks_key(tenant))
        counts = await pipe.execute()
        return [t for t, n in zip(tenants, counts, strict=True) if int(n) > 0]

    def ingest_call(self, tenant: str, retention_s: int) -> Call:
        """Turn the tenant's next feed events into deliveries (see ``scripts.INGEST``)."""
        feed = keys.feed_keys(tenant)
        return (
            scripts.INGEST,
            [
                feed[0],
                feed[1],
                keys.webhooks_key(tenant),
                keys.webhook_cursor_key(tenant),
                keys.webhook_phases_key(tenant),
            ],
            [
                secrets.token_hex(8),
                INGEST_BATCH,
                now_ms(),
                keys.webhook_delivery_prefix(tenant),
                keys.webhook_recent_prefix(tenant),
                RECENT_MAX,
                retention_s,
                keys.webhook_due_prefix(tenant),
            ],
        )

    def claim_call(
        self,
        tenant: str,
        *,
        take: int,
        lease_ms: int,
        per_endpoint: int,
        max_attempts: int,
        retention_s: int,
        busy: dict[str, int],
        first: int = 0,
    ) -> Call:
        """Claim up to ``take`` due deliveries, starting with endpoint number ``first``
        (see ``scripts.CLAIM``)."""
        args: list[Any] = [
            now_ms(),
            lease_ms,
            take,
            per_endpoint,
            max_attempts,
            keys.webhook_delivery_prefix(tenant),
            retention_s,
            keys.webhook_due_prefix(tenant),
            first,
        ]
        for endpoint_id, count in busy.items():
            args += [endpoint_id, count]
        return (scripts.CLAIM, [keys.webhooks_key(tenant)], args)

    @staticmethod
    def claims_from(tenant: str, reply: Sequence[Any]) -> list[Claim]:
        out = []
        for i in range(0, len(reply), 6):
            out.append(
                Claim(
                    tenant=tenant,
                    delivery_id=_text(reply[i]),
                    claim=int(reply[i + 1]),
                    endpoint=Endpoint.from_json(reply[i + 2]),
                    event_type=_text(reply[i + 3]),
                    data=reply[i + 4] if isinstance(reply[i + 4], bytes) else b"null",
                    t_us=int(reply[i + 5] or 0),
                )
            )
        return out

    async def run_calls(self, calls: Sequence[Call]) -> list[Any]:
        """Several calls in one round trip; a refused call's reply is its error."""
        return await self._run(calls)

    def record_call(
        self, claim: Claim, outcome: str, attempt: bytes, next_ms: int, retention_s: int
    ) -> Call:
        """Write an attempt's answer (see ``scripts.RECORD``)."""
        return (
            scripts.RECORD,
            [
                keys.webhook_due_key(claim.tenant, claim.endpoint.id),
                keys.webhook_delivery_key(claim.tenant, claim.delivery_id),
            ],
            [claim.delivery_id, claim.claim, outcome, attempt, next_ms, retention_s],
        )
