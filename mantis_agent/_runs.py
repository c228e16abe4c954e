"""The runs API without I/O: what to send for predict/status/result/cancel/get_run, what an
answer means, and the two loops (``wait``, ``result``) as small state machines.

``MantisClient`` and ``AsyncMantisClient`` only send the ``ApiCall``s built here and sleep
for the delays decided here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from ._settings import ClientSettings
from ._wire import error_for, parse_retry_after
from .errors import UnexpectedResponse, WaitTimeout

PREDICT_PATH = "/v1/predict"
IDEMPOTENCY_HEADER = "Idempotency-Key"
TERMINAL_PHASES = frozenset({"complete", "halted", "cancelled"})
# Used when a non-terminal answer carries no hint at all (a proxy dropped the header).
FALLBACK_POLL_S = 1.0


@dataclass(frozen=True, slots=True)
class ApiCall:
    """One HTTP request to make: ``http.request(method, url, **kwargs)``."""

    method: str
    url: str
    kwargs: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RunHandle:
    """What ``predict`` returns: the run's id and phase, and the whole run object."""

    run_id: str
    phase: str
    run: dict[str, Any] = field(repr=False)
    events_url: str | None = None
    replayed: bool = False  # True when an Idempotency-Key retry named an earlier run


def is_terminal(run: Mapping[str, Any]) -> bool:
    """True once a run object's phase is final."""
    return run.get("phase") in TERMINAL_PHASES


class RunsApi:
    """Builds the calls and reads the answers of the runs API for one client's settings."""

    def __init__(self, settings: ClientSettings) -> None:
        self._settings = settings

    def describe(self, run_id: str | None) -> str:
        where = self._settings.display_endpoint
        return f"run {run_id!r} at {where}" if run_id else f"predict at {where}"

    def predict(self, body: Mapping[str, Any], idempotency_key: str | None) -> ApiCall:
        """Submit ``body`` (``{"task_suite": {...}, ...}``)."""
        headers = {IDEMPOTENCY_HEADER: idempotency_key} if idempotency_key is not None else None
        return ApiCall(
            "POST",
            self._settings.api_url(PREDICT_PATH),
            {"json": dict(body), **self._settings.api_request(headers)},
        )

    def action(self, action: str, run_id: str, **fields: Any) -> ApiCall:
        """``POST /v1/predict`` with ``{"action", "run_id", ...fields}`` (None fields left out)."""
        body = {"action": action, "run_id": run_id}
        body.update({k: v for k, v in fields.items() if v is not None})
        return ApiCall(
            "POST",
            self._settings.api_url(PREDICT_PATH),
            {"json": body, **self._settings.api_request()},
        )

    def get_run(self, run_id: str, etag: str | None = None) -> ApiCall:
        """``GET /v1/runs/{run_id}``, conditional on ``etag`` when given."""
        headers = {"If-None-Match": etag} if etag else None
        return ApiCall("GET", self._settings.run_url(run_id), self._settings.api_request(headers))

    def cancel(self, run_id: str) -> ApiCall:
        """``POST /v1/predict`` ``{"action": "cancel"}``."""
        return self.action("cancel", run_id)

    def json_of(self, response: httpx.Response, run_id: str | None) -> dict[str, Any]:
        """The JSON object of a 2xx answer; the SDK's named error otherwise."""
        what = self.describe(run_id)
        if response.status_code >= 300:
            raise error_for(response, what)
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise UnexpectedResponse(
                f"{what}: HTTP {response.status_code} without a JSON object body",
                status=response.status_code,
            )
        return body

    def handle(self, response: httpx.Response) -> RunHandle:
        """Read a submit's answer into a ``RunHandle``."""
        run = self.json_of(response, None)
        return RunHandle(
            run_id=str(run["run_id"]),
            phase=str(run["phase"]),
            run=run,
            events_url=run.get("events_url"),
            replayed=response.headers.get("Idempotent-Replayed") == "true",
        )


class Waiter:
    """``wait``: poll the run with its ETag, sleeping as the server's hint says, until the
    run is terminal or ``timeout`` seconds have passed (``WaitTimeout``)."""

    def __init__(
        self,
        api: RunsApi,
        run_id: str,
        timeout: float | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must not be negative")
        self._api = api
        self.run_id = run_id
        self._clock = clock
        self._deadline = None if timeout is None else clock() + timeout
        self._timeout = timeout
        self._etag: str | None = None
        self.run: dict[str, Any] | None = None

    def request(self) -> ApiCall:
        """The next poll."""
        return self._api.get_run(self.run_id, self._etag)

    def delay_after(self, response: httpx.Response) -> float | None:
        """Seconds to sleep before the next poll, or None once ``self.run`` is terminal."""
        if response.status_code == 304 and self.run is not None:
            hint_s = parse_retry_after(response.headers.get("Retry-After"))
        else:
            self.run = self._api.json_of(response, self.run_id)
            self._etag = response.headers.get("ETag")
            hint_ms = self.run.get("poll_after_ms")
            hint_s = hint_ms / 1000 if isinstance(hint_ms, int | float) else None
        if is_terminal(self.run):
            return None
        delay = FALLBACK_POLL_S if hint_s is None else hint_s
        if self._deadline is None:
            return delay
        remaining = self._deadline - self._clock()
        if remaining <= 0:
            raise WaitTimeout(
                f"{self._api.describe(self.run_id)}: still {self.run.get('phase')} after "
                f"{self._timeout} s"
            )
        return min(delay, remaining)

    def final(self) -> dict[str, Any]:
        """The terminal run object, once ``delay_after`` returned None."""
        if self.run is None or not is_terminal(self.run):
            raise RuntimeError("the run is not terminal yet")
        return self.run


class ResultGatherer:
    """``result``: every page of the run's extract rows, gathered into one answer."""

    def __init__(self, api: RunsApi, run_id: str, limit: int | None) -> None:
        self._api = api
        self.run_id = run_id
        self._limit = limit
        self._cursor = ""
        self.rows: list[Any] = []
        self.last: dict[str, Any] | None = None

    def request(self) -> ApiCall:
        """The next page."""
        return self._api.action("result", self.run_id, cursor=self._cursor, limit=self._limit)

    def take(self, response: httpx.Response) -> bool:
        """Keep a page's rows; True while the log already holds more (ask again at once)."""
        page = self._api.json_of(response, self.run_id)
        self.rows.extend(page.get("rows") or [])
        self.last = page
        cursor = page.get("next_cursor")
        # A page that did not move the cursor cannot be followed by a different one.
        if not page.get("more") or not cursor or cursor == self._cursor:
            return False
        self._cursor = cursor
        return True

    def answer(self) -> dict[str, Any]:
        """The last page's answer with every row gathered."""
        if self.last is None:
            raise RuntimeError("no page was read")
        return {**self.last, "rows": self.rows}
