"""asyncio twin of `MantisClient`: the same methods, as async iterators."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from types import TracebackType
from typing import Any, Self

import httpx
from httpx_sse import aconnect_sse

from ._follow import DEFAULT_BACKOFF_BASE_S, DEFAULT_BACKOFF_CAP_S, Follower
from ._runs import ApiCall, ResultGatherer, RunHandle, RunsApi, Waiter
from ._settings import DEFAULT_CONNECT_TIMEOUT_S, DEFAULT_IDLE_TIMEOUT_S, ClientSettings
from ._wire import Connection, Event, Outcome, check_stream_response
from .errors import MantisConnectionError, MantisError


class AsyncMantisClient:
    """Streams a run's events over SSE with asyncio; see `MantisClient` for the semantics.

    Leaving an `async for` early leaves its connection open until the generator is
    collected; wrap it in `contextlib.aclosing` to close it at once.
    """

    def __init__(
        self,
        endpoint: str,
        token: str,
        *,
        idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self._settings = ClientSettings(endpoint, token, idle_timeout_s, connect_timeout_s)
        # A client handed in belongs to the caller: used, never closed, here.
        self._owns_http = http is None
        self._http = http if http is not None else httpx.AsyncClient()
        self._runs = RunsApi(self._settings)

    @classmethod
    def from_env(cls, *, http: httpx.AsyncClient | None = None) -> Self:
        """A client from MANTIS_ENDPOINT, MANTIS_API_TOKEN and MANTIS_IDLE_TIMEOUT_S."""
        s = ClientSettings.from_env()
        return cls(s.endpoint, s.token, idle_timeout_s=s.idle_timeout_s, http=http)

    def __repr__(self) -> str:
        return self._settings.describe(type(self).__name__)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP connections this client opened."""
        if self._owns_http:
            await self._http.aclose()

    # -- runs: the same methods as MantisClient, awaited --------------------------------

    async def predict(
        self, body: Mapping[str, Any], idempotency_key: str | None = None
    ) -> RunHandle:
        """Submit a run; see `MantisClient.predict`."""
        return self._runs.handle(await self._send(self._runs.predict(body, idempotency_key)))

    async def status(self, run_id: str) -> dict[str, Any]:
        """The run object (``{"action": "status"}``)."""
        return self._runs.json_of(await self._send(self._runs.action("status", run_id)), run_id)

    async def get_run(self, run_id: str) -> dict[str, Any]:
        """The run object from the cheap poll ``GET /v1/runs/{run_id}``."""
        return self._runs.json_of(await self._send(self._runs.get_run(run_id)), run_id)

    async def cancel(self, run_id: str) -> dict[str, Any]:
        """Cancel the run; see `MantisClient.cancel`."""
        return self._runs.json_of(await self._send(self._runs.cancel(run_id)), run_id)

    async def result(self, run_id: str, *, limit: int | None = None) -> dict[str, Any]:
        """Every extract row so far, all pages gathered; see `MantisClient.result`."""
        gatherer = ResultGatherer(self._runs, run_id, limit)
        while gatherer.take(await self._send(gatherer.request())):
            pass
        return gatherer.answer()

    async def result_page(
        self, run_id: str, cursor: str = "", *, limit: int | None = None
    ) -> dict[str, Any]:
        """One page of extract rows after ``cursor``."""
        call = self._runs.action("result", run_id, cursor=cursor, limit=limit)
        return self._runs.json_of(await self._send(call), run_id)

    # The contract names the parameter for both clients; asyncio.timeout() works too.
    async def wait(self, run_id: str, timeout: float | None = None) -> dict[str, Any]:  # noqa: ASYNC109
        """Poll with the server's hint until terminal; `WaitTimeout` after ``timeout`` s."""
        waiter = Waiter(self._runs, run_id, timeout)
        while True:
            delay = waiter.delay_after(await self._send(waiter.request()))
            if delay is None:
                return waiter.final()
            await asyncio.sleep(delay)

    async def _send(self, call: ApiCall) -> httpx.Response:
        try:
            return await self._http.request(call.method, call.url, **call.kwargs)
        except httpx.RequestError as exc:
            raise MantisConnectionError(
                f"cannot reach {self._settings.display_endpoint}: {type(exc).__name__}"
            ) from exc

    # -- events ------------------------------------------------------------------------

    def stream_events(self, run_id: str, since: str = "") -> AsyncGenerator[Event, None]:
        """Events after `since` over one connection; ends as `MantisClient.stream_events`."""
        return self._stream(run_id, since, Connection())

    def follow(
        self,
        run_id: str,
        since: str = "",
        *,
        max_attempts: int | None = None,
        backoff_base_s: float = DEFAULT_BACKOFF_BASE_S,
        backoff_cap_s: float = DEFAULT_BACKOFF_CAP_S,
    ) -> AsyncGenerator[Event, None]:
        """Every event after `since` exactly once, in order, reconnecting until terminal."""
        follower = Follower(
            run_id,
            since,
            max_attempts=max_attempts,
            backoff_base_s=backoff_base_s,
            backoff_cap_s=backoff_cap_s,
        )
        return self._follow(follower)

    async def _follow(self, follower: Follower) -> AsyncGenerator[Event, None]:
        while True:
            conn = Connection()
            try:
                async with aclosing(self._stream(follower.run_id, follower.cursor, conn)) as events:
                    async for event in events:
                        follower.saw(event)
                        yield event
            except MantisError as exc:
                delay: float | None = follower.after_error(exc)
            else:
                delay = follower.after_stream(conn)
            if delay is None:
                return
            await asyncio.sleep(delay)

    async def _stream(
        self, run_id: str, since: str, conn: Connection
    ) -> AsyncGenerator[Event, None]:
        what = f"run {run_id!r} at {self._settings.display_endpoint}"
        url = self._settings.events_url(run_id)
        try:
            async with aconnect_sse(
                self._http, "GET", url, **self._settings.stream_request(since)
            ) as source:
                if source.response.status_code >= 300:
                    await source.response.aread()
                if not check_stream_response(source.response, conn, what):
                    return
                # aclosing: returning early must not leave the parser to the GC.
                async with aclosing(source.aiter_sse()) as blocks:
                    async for sse in blocks:
                        event = conn.decode(sse)
                        if event is None:
                            continue
                        yield event
                        if conn.outcome is Outcome.TERMINAL:
                            return
                conn.outcome = Outcome.CLOSED
        except httpx.RequestError as exc:
            conn.broke(exc, self._settings.display_endpoint)
