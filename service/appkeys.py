"""Typed application keys: everything the handlers share, in one place."""

from __future__ import annotations

from aiohttp import web

from .admission import Admission
from .auth import TokenTable
from .durable.live import LiveStreams
from .durable.store import DurableStore
from .hub import Hub
from .lifecycle import Lifecycle
from .metrics import ScrapeHook
from .settings import Settings
from .store import LogReader
from .store_client import StoreClient
from .tickets import TicketBook
from .webhooks.runtime import Webhooks

SETTINGS = web.AppKey("settings", Settings)
TOKENS = web.AppKey("tokens", TokenTable)
TICKETS = web.AppKey("tickets", TicketBook)
STORE = web.AppKey("store", StoreClient)
HUB = web.AppKey("hub", Hub)
READER = web.AppKey("reader", LogReader)
# Gauges read at scrape time (see metrics.add_scrape_hook); the metrics module imports
# these keys late, since the hub (imported above) counts through it.
SCRAPE_HOOKS = web.AppKey("scrape_hooks", list[ScrapeHook])

# Per request: its id (logs, X-Request-Id) and the tenant it authenticated as (access log).
REQUEST_ID = web.RequestKey("request_id", str)
TENANT = web.RequestKey("tenant", str)
# Set when an expired ticket was admitted by a resuming stream's grace: its expiry (ms).
TICKET_GRACE = web.RequestKey("ticket_grace", int)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
ADMISSION = web.AppKey("admission", Admission)
DURABLE_STORE = web.AppKey("durable_store", DurableStore)
LIVE_STREAMS = web.AppKey("live_streams", LiveStreams)
WEBHOOKS = web.AppKey("webhooks", Webhooks)
