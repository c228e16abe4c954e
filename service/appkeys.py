"""Typed application keys: everything the handlers share, in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

import redis.asyncio as aredis
from aiohttp import web

from .auth import TokenTable
from .settings import Settings

if TYPE_CHECKING:
    from .hub import Hub
    from .store import LogReader

SETTINGS = web.AppKey("settings", Settings)
TOKENS = web.AppKey("tokens", TokenTable)
REDIS = web.AppKey("redis", aredis.Redis)
HUB = web.AppKey["Hub"]("hub")
READER = web.AppKey["LogReader"]("reader")
