"""CORS for the dashboard origins listed in MANTIS_CORS_ORIGINS (none by default).

A small signal hook rather than aiohttp-cors: the headers must be on every response of
the API resources, including a stream's (whose headers go out when the handler prepares
it, before any middleware sees a return value), the 204 that stops an EventSource (a
204 without them is a network error to the browser, which then reconnects forever) and
the JSON errors. aiohttp-cors sends no ``Vary: Origin`` and is untyped; this is 70 lines.

No credentials are allowed (the API authenticates by header or ticket, never by
cookie), so ``Access-Control-Allow-Credentials`` is never sent.
"""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import hdrs, web

ALLOW_METHODS = "GET, POST"
ALLOW_HEADERS = "X-Mantis-Token, Last-Event-ID, Content-Type"
EXPOSE_HEADERS = "Retry-After"
MAX_AGE_S = 600


def normalize_origin(origin: str) -> str:
    """Origins compare as browsers serialize them: lower case, no trailing slash."""
    return origin.strip().rstrip("/").lower()


class Cors:
    """Which origins may read which resources; installs its hook and preflight routes."""

    def __init__(self, origins: Iterable[str]) -> None:
        self.origins = frozenset(normalize_origin(o) for o in origins if o.strip())
        self._resources: set[web.AbstractResource] = set()

    def allowed(self, origin: str | None) -> str | None:
        """The request's Origin when it is listed, else None (no Origin: not CORS)."""
        if origin is None or normalize_origin(origin) not in self.origins:
            return None
        return origin

    def enable(self, route: web.AbstractRoute) -> None:
        """Serve CORS headers on ``route``'s resource and answer its preflight ``OPTIONS``."""
        resource = route.resource
        if not isinstance(resource, web.Resource):
            raise TypeError("CORS can be enabled only on a routed resource")
        if resource not in self._resources:
            self._resources.add(resource)
            resource.add_route(hdrs.METH_OPTIONS, self.preflight)

    def install(self, app: web.Application) -> None:
        app.on_response_prepare.append(self.on_prepare)

    def _covers(self, request: web.Request) -> bool:
        route = request.match_info.route
        return route.resource is not None and route.resource in self._resources

    async def on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """Add the CORS headers to every response of an enabled resource."""
        if not self.origins or not self._covers(request):
            return
        # The answer depends on Origin whether or not this one is listed: tell caches.
        response.headers.add(hdrs.VARY, "Origin")
        origin = self.allowed(request.headers.get(hdrs.ORIGIN))
        if origin is None or request.method == hdrs.METH_OPTIONS:
            return
        response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
        response.headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = EXPOSE_HEADERS

    async def preflight(self, request: web.Request) -> web.Response:
        """``OPTIONS``: the allowed methods and headers for a listed origin, else nothing."""
        headers = {hdrs.ALLOW: f"{ALLOW_METHODS}, OPTIONS"}
        origin = self.allowed(request.headers.get(hdrs.ORIGIN))
        if origin is not None and hdrs.ACCESS_CONTROL_REQUEST_METHOD in request.headers:
            headers.update(
                {
                    hdrs.ACCESS_CONTROL_ALLOW_ORIGIN: origin,
                    hdrs.ACCESS_CONTROL_ALLOW_METHODS: ALLOW_METHODS,
                    hdrs.ACCESS_CONTROL_ALLOW_HEADERS: ALLOW_HEADERS,
                    hdrs.ACCESS_CONTROL_MAX_AGE: str(MAX_AGE_S),
                }
            )
        return web.Response(status=204, headers=headers)
