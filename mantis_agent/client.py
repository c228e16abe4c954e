"""Blocking client for a run's event stream (`GET /v1/runs/{run_id}/events`)."""

from __future__ import annotations

import time
from collections.abc import Generator, Mapping
from contextlib import closing
from types import TracebackType
from typing import Any, Self

import httpx
from httpx_sse import connect_sse

from ._follow import DEFAULT_BACKOFF_BASE_S, DEFAULT_BACKOFF_CAP_S, Follower
from ._runs import ApiCall, ResultGatherer, RunHandle, RunsApi, Waiter
from ._settings import DEFAULT_CONNECT_TIMEOUT_S, DEFAULT_IDLE_TIMEOUT_S, ClientSettings
from ._wire import Connection, Event, Outcome, check_stream_response
from .aio import AsyncMantisClient
from .errors import MantisConnectionError, MantisError

__all__ = ["AsyncMantisClient", "Event", "MantisClient", "RunHandle"]


class MantisClient:
    """Streams a run's events over SSE, one connection at a time or following to the end."""

    def __init__(
        self,
        endpoint: str,
        token: str,
        *,
        idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        http: httpx.Client | None = None,
    ) -> None:
        self._settings = ClientSettings(endpoint, token, idle_timeout_s, connect_timeout_s)
        # A client handed in belongs to the caller: used, never closed, here.
        self._owns_http = http is None
        self._http = http if http is not None else httpx.Client()
        self._runs = RunsApi(self._settings)

    @classmethod
    def from_env(cls, *, http: httpx.Client | None = None) -> Self:
        """A client from MANTIS_ENDPOINT, MANTIS_API_TOKEN and MANTIS_IDLE_TIMEOUT_S."""
        s = ClientSettings.from_env()
        return cls(s.endpoint, s.token, idle_timeout_s=s.idle_timeout_s, http=http)

    def __repr__(self) -> str:
        return self._settings.describe(type(self).__name__)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP connections this client opened."""
        if self._owns_http:
            self._http.close()

    # -- runs: submit, poll, result, cancel ------------------------------------------------

    def predict(self, body: Mapping[str, Any], idempotency_key: str | None = None) -> RunHandle:
        """Submit a run (``{"task_suite": {...}, "run_id"?, "metadata"?}``); it starts queued.

        With ``idempotency_key``, a retry of the same body within 24 h names the same run
        (``handle.replayed``) instead of creating another.
        """
        return self._runs.handle(self._send(self._runs.predict(body, idempotency_key)))

    def status(self, run_id: str) -> dict[str, Any]:
        """The run object (``POST /v1/predict`` ``{"action": "status"}``)."""
        return self._runs.json_of(self._send(self._runs.action("status", run_id)), run_id)

    def get_run(self, run_id: str) -> dict[str, Any]:
        """The run object from the cheap poll ``GET /v1/runs/{run_id}``."""
        return self._runs.json_of(self._send(self._runs.get_run(run_id)), run_id)

    def cancel(self, run_id: str) -> dict[str, Any]:
        """Cancel: a queued run is cancelled at once, a running one gets
        ``cancel_requested``; ``RunFinished`` if it is already over."""
        return self._runs.json_of(self._send(self._runs.cancel(run_id)), run_id)

    def result(self, run_id: str, *, limit: int | None = None) -> dict[str, Any]:
        """Every extract row the run has so far, following ``next_cursor`` across pages.

        The answer is the last page's (``done``, ``phase``, ``next_cursor`` to ask again
        later if not ``done``) with ``rows`` holding all the rows; ``result_page`` reads one.
        """
        gatherer = ResultGatherer(self._runs, run_id, limit)
        while gatherer.take(self._send(gatherer.request())):
            pass
        return gatherer.answer()

    def result_page(
        self, run_id: str, cursor: str = "", *, limit: int | None = None
    ) -> dict[str, Any]:
        """One page of extract rows after ``cursor`` (a ``next_cursor``; empty: the start)."""
        call = self._runs.action("result", run_id, cursor=cursor, limit=limit)
        return self._runs.json_of(self._send(call), run_id)

    def wait(self, run_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Poll until the run is terminal and return its run object; sleeps as the server's
        hint says. ``WaitTimeout`` (a ``TimeoutError``) after ``timeout`` seconds."""
        waiter = Waiter(self._runs, run_id, timeout)
        while True:
            delay = waiter.delay_after(self._send(waiter.request()))
            if delay is None:
                return waiter.final()
            time.sleep(delay)

    def _send(self, call: ApiCall) -> httpx.Response:
        try:
            return self._http.request(call.method, call.url, **call.kwargs)
        except httpx.RequestError as exc:
            raise MantisConnectionError(
                f"cannot reach {self._settings.display_endpoint}: {type(exc).__name__}"
            ) from exc

    # -- events ------------------------------------------------------------------------

    def stream_events(self, run_id: str, since: str = "") -> Generator[Event, None, None]:
        """Events after `since` over one connection.

        Ends after the terminal event, when the server ends the stream, on 204, when
        nothing (pings included) arrives for `idle_timeout_s`, or if the connection
        drops mid-stream; resume with the last id seen as `since`.
        """
        return self._stream(run_id, since, Connection())

    def follow(
        self,
        run_id: str,
        since: str = "",
        *,
        max_attempts: int | None = None,
        backoff_base_s: float = DEFAULT_BACKOFF_BASE_S,
        backoff_cap_s: float = DEFAULT_BACKOFF_CAP_S,
    ) -> Generator[Event, None, None]:
        """Every event after `since` exactly once, in order, reconnecting until terminal.

        `max_attempts` bounds consecutive failed connections (None: no bound).
        Unauthorized, RunNotFound and BadRequest are raised at once.
        """
        follower = Follower(
            run_id,
            since,
            max_attempts=max_attempts,
            backoff_base_s=backoff_base_s,
            backoff_cap_s=backoff_cap_s,
        )
        return self._follow(follower)

    def _follow(self, follower: Follower) -> Generator[Event, None, None]:
        while True:
            conn = Connection()
            try:
                with closing(self._stream(follower.run_id, follower.cursor, conn)) as events:
                    for event in events:
                        follower.saw(event)
                        yield event
            except MantisError as exc:
                delay: float | None = follower.after_error(exc)
            else:
                delay = follower.after_stream(conn)
            if delay is None:
                return
            time.sleep(delay)

    def _stream(self, run_id: str, since: str, conn: Connection) -> Generator[Event, None, None]:
        what = f"run {run_id!r} at {self._settings.display_endpoint}"
        url = self._settings.events_url(run_id)
        try:
            with connect_sse(
                self._http, "GET", url, **self._settings.stream_request(since)
            ) as source:
                if source.response.status_code >= 300:
                    source.response.read()
                if not check_stream_response(source.response, conn, what):
                    return
                for sse in source.iter_sse():
                    event = conn.decode(sse)
                    if event is None:
                        continue
                    yield event
                    if conn.outcome is Outcome.TERMINAL:
                        return
                conn.outcome = Outcome.CLOSED
        except httpx.RequestError as exc:
            conn.broke(exc, self._settings.display_endpoint)
