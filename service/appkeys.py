"""Typed application keys: everything the handlers share, in one place."""

from __future__ import annotations

from aiohttp import web

from .auth import TokenTable
from .hub import Hub
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
WEBHOOKS = web.AppKey("webhooks", Webhooks)
