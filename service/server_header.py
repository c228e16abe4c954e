"""No ``Server`` header on any response: the service names no software or version.

aiohttp adds ``Server: Python/3.x aiohttp/x.y`` to every response, including the ones its
protocol layer writes for requests it cannot parse (which no middleware or signal sees),
and has no switch to turn it off. So the one method that adds it is wrapped, once per
process, to take it out again before the headers are written.
"""

from __future__ import annotations

from typing import Any

from aiohttp import hdrs, web

_MARK = "_mantis_without_server"


def drop_server_header() -> None:
    """Wrap ``StreamResponse._prepare_headers`` (idempotent)."""
    original: Any = web.StreamResponse._prepare_headers
    if getattr(original, _MARK, False):
        return

    async def _prepare_headers(self: web.StreamResponse) -> None:
        await original(self)
        self.headers.popall(hdrs.SERVER, None)

    setattr(_prepare_headers, _MARK, True)
    web.StreamResponse._prepare_headers = _prepare_headers  # type: ignore[method-assign]
