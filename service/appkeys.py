"""Typed application keys: everything the handlers share, in one place."""

from __future__ import annotations

from aiohttp import web

from runner_bridge.connect import AsyncClient

from .auth import TokenTable
from .hub import Hub
from .settings import Settings
from .store import LogReader
from .tickets import TicketBook

SETTINGS = web.AppKey("settings", Settings)
TOKENS = web.AppKey("tokens", TokenTable)
TICKETS = web.AppKey("tickets", TicketBook)
REDIS: web.AppKey[AsyncClient] = web.AppKey("redis")
HUB = web.AppKey("hub", Hub)
READER = web.AppKey("reader", LogReader)
