"""What the webhook routes share, and the dispatcher's lifetime in the app."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractResolver

from .. import metrics
from ..settings import Settings
from ..store_client import StoreClient
from .dispatcher import DispatchConfig, Dispatcher, lease_for
from .guard import AddressPolicy
from .sender import Sender
from .store import WebhookStore

ResolverFactory = Callable[[], AbstractResolver]


@dataclass(frozen=True)
class Webhooks:
    """The store, the address policy, the resolver registration checks with, and how to
    tell this pod's dispatcher that an endpoint was added."""

    store: WebhookStore
    policy: AddressPolicy
    resolver: AbstractResolver
    added: Callable[[], None]


def policy_of(settings: Settings) -> AddressPolicy:
    return AddressPolicy(
        allow_private=settings.webhook_allow_private, allow_http=settings.webhook_allow_http
    )


def dispatch_config(settings: Settings) -> DispatchConfig:
    return DispatchConfig(
        retry_s=settings.webhook_retry_s,
        concurrency=settings.webhook_concurrency,
        per_endpoint=settings.webhook_endpoint_concurrency,
        retention_s=settings.retention_s,
        lease_s=lease_for(settings.webhook_timeout_s),
    )


def webhooks_context(
    settings: Settings,
    tenants: Sequence[str],
    store: Callable[[], StoreClient],
    publish: Callable[[Webhooks], None],
    resolver_factory: ResolverFactory | None = None,
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context: routes' ``Webhooks`` and the pod's dispatcher, started after
    the store client exists and stopped before it closes."""
    make_resolver: ResolverFactory = resolver_factory or aiohttp.ThreadedResolver

    async def context(app: web.Application) -> AsyncIterator[None]:
        policy = policy_of(settings)
        hooks = WebhookStore(store())
        resolver = make_resolver()
        dispatcher = Dispatcher(
            hooks,
            tenants,
            Sender(
                policy,
                limit=settings.webhook_concurrency,
                resolver_factory=make_resolver,
                timeout_s=settings.webhook_timeout_s,
            ),
            dispatch_config(settings),
        )
        publish(
            Webhooks(
                store=hooks,
                policy=policy,
                resolver=resolver,
                added=lambda: dispatcher.wake(rescan=True),
            )
        )

        async def count_pending(app: web.Application) -> None:
            metrics.set_webhook_pending(await hooks.pending(tenants))

        metrics.add_scrape_hook(app, count_pending)
        await dispatcher.start()
        try:
            yield
        finally:
            await dispatcher.stop()
            await resolver.close()

    return context
