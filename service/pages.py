"""The ops dashboard (``GET /dashboard``): static files of the package, served with strict
security headers.

The page is plain HTML, CSS and JavaScript (no framework, no build step, no CDN), so it
works offline and what is served is what is in the repository. The files are read once
when the app is built and kept in memory: a handful of kilobytes, no disk read per
request, and no path from a URL ever reaches the file system.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from aiohttp import web

# Everything from this origin only: no inline script or style, no plug-ins, no framing, no
# <base> or form target elsewhere. The page reaches the API (same origin) with fetch() and
# EventSource, which ``connect-src`` ('self' through default-src) allows.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    # The page's URL may have carried a token in its fragment (never sent, but the
    # address a click would leak is no one's business).
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # Small and versioned with the service: revalidate rather than run stale code.
    "Cache-Control": "no-cache",
}

# URL path -> (file in service/dashboard/, content type)
FILES = {
    "/dashboard": ("index.html", "text/html"),
    "/dashboard/app.js": ("app.js", "text/javascript"),
    "/dashboard/app.css": ("app.css", "text/css"),
    "/dashboard/favicon.svg": ("favicon.svg", "image/svg+xml"),
}


@dataclass(frozen=True, slots=True)
class StaticFile:
    """One file of the page, held in memory."""

    body: bytes
    content_type: str

    async def handle(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.body,
            content_type=self.content_type,
            charset="utf-8",
            headers=SECURITY_HEADERS,
        )


def add_dashboard(app: web.Application) -> None:
    """Route ``/dashboard`` and its assets (read from the package now, not per request)."""
    folder = resources.files("service") / "dashboard"
    for path, (name, content_type) in FILES.items():
        page = StaticFile((folder / name).read_bytes(), content_type)
        app.router.add_get(path, page.handle)
    app.router.add_get("/dashboard/", _to_dashboard)


async def _to_dashboard(request: web.Request) -> web.Response:
    raise web.HTTPPermanentRedirect("/dashboard")
