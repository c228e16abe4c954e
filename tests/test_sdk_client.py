"""The SDK against a scripted aiohttp server that speaks the contract's wire format.

The sync client runs in a worker thread (asyncio.to_thread) because the server lives
on the test's event loop; each client-facing test runs for both clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from aiohttp import web

from mantis_agent import (
    AsyncMantisClient,
    BadRequest,
    ConfigurationError,
    InvalidCursor,
    MantisConnectionError,
    MantisError,
    RunNotFound,
    ServiceUnavailable,
    Unauthorized,
)
from mantis_agent._follow import Backoff, Follower
from mantis_agent._wire import Connection, Outcome, parse_retry_after
from mantis_agent.client import MantisClient

TOKEN = "tok-S3CRET-7f1e9a"
RUN = "r1"
MAX_CONNECTIONS = 10  # a client that reconnects more often than this is looping

Writer = Callable[[web.StreamResponse, list[dict[str, Any]]], Awaitable[None]]
STALL = object()  # script marker: accept the connection, send no headers at all


def make_log(rows: int = 3, halt_class: str | None = None) -> list[dict[str, Any]]:
    """A finished run's log as the service would stream it: phase, rows, terminal."""
    log: list[dict[str, Any]] = [
        {"event": "phase", "id": "1-0", "data": {"phase": "running", "run_id": RUN}}
    ]
    for i in range(rows):
        log.append(
            {
                "event": "step",
                "id": f"{i + 2}-0",
                "data": {"kind": "step", "step_index": i, "type": "click"},
            }
        )
    log.append(
        {
            "event": "terminal",
            "id": f"{rows + 2}-0",
            "data": {"phase": "complete", "run_id": RUN, "halt_class": halt_class},
        }
    )
    return log


def frame(event: dict[str, Any]) -> bytes:
    lines = [f"event: {event['event']}"]
    if event["id"]:
        lines.append(f"id: {event['id']}")
    data = event["data"]
    lines.append(f"data: {data if isinstance(data, str) else json.dumps(data)}")
    return ("\n".join(lines) + "\n\n").encode()


def send(count: int | None = None) -> Writer:
    """Send the next `count` events (all when None), then end the response."""

    async def write(resp: web.StreamResponse, pending: list[dict[str, Any]]) -> None:
        for event in pending[:count]:
            await resp.write(frame(event))

    return write


class FakeService:
    """One run's event endpoint; connection n follows `script[n]`, then plain streaming."""

    def __init__(self, log: list[dict[str, Any]], script: list[Any] | None = None) -> None:
        self.log = log
        self.script = list(script or [])
        self.requests: list[dict[str, str | None]] = []
        self.retry_ms = 20  # the service sends 2000; tests keep reconnects quick
        self.new_request = asyncio.Event()

    async def stalled(self) -> None:
        """Send nothing at all until the client reconnects (or 5 s pass)."""
        released = self.new_request
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(released.wait(), 5)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(
            {
                "since": request.query.get("since"),
                "token": request.headers.get("X-Mantis-Token"),
                "accept": request.headers.get("Accept"),
            }
        )
        self.new_request.set()  # releases a hung earlier connection
        self.new_request = asyncio.Event()
        if len(self.requests) > MAX_CONNECTIONS:
            return error(410, "too_many", "test bound on reconnects exceeded")
        step = self.script.pop(0) if self.script else send()
        if step is STALL:
            await self.stalled()
            return web.Response(status=204)  # never read: the client gave up already
        if isinstance(step, web.Response):
            return step
        if request.headers.get("X-Mantis-Token") != TOKEN:
            return error(401, "unauthorized", "missing or unknown token")
        if request.match_info["run_id"] != RUN:
            return error(404, "run_not_found", "no such run")
        since = request.query.get("since", "")
        ids = [e["id"] for e in self.log]
        if since and since not in ids:
            return error(400, "invalid_cursor", f"cursor {since!r} is not valid")
        start = ids.index(since) + 1 if since else 0
        if start == len(self.log):
            return web.Response(status=204)
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
            }
        )
        await resp.prepare(request)
        await resp.write(f"retry: {self.retry_ms}\n\n".encode())
        await step(resp, self.log[start:])
        return resp


def error(status: int, code: str, message: str, **headers: str) -> web.Response:
    body = json.dumps({"error": {"code": code, "message": message}})
    return web.Response(status=status, text=body, content_type="application/json", headers=headers)


def hang_after(count: int, service: FakeService) -> Writer:
    """Send `count` events, then nothing at all until the client reconnects (or 5 s)."""

    async def write(resp: web.StreamResponse, pending: list[dict[str, Any]]) -> None:
        await send(count)(resp, pending)
        await service.stalled()

    return write


class Driver:
    """Runs either client to completion and returns the events it yielded."""

    def __init__(self, client: MantisClient | AsyncMantisClient) -> None:
        self.client = client

    async def collect(self, method: str, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        if isinstance(self.client, MantisClient):
            gen = getattr(self.client, method)(*args, **kwargs)
            return await asyncio.to_thread(lambda: [dict(e) for e in gen])
        return [dict(e) async for e in getattr(self.client, method)(*args, **kwargs)]

    async def close(self) -> None:
        if isinstance(self.client, MantisClient):
            self.client.close()
        else:
            await self.client.aclose()


@pytest.fixture(params=["sync", "async"])
def kind(request) -> str:
    return request.param


def make_client(kind: str, endpoint: str, **kwargs: Any) -> MantisClient | AsyncMantisClient:
    kwargs.setdefault("token", TOKEN)
    cls = MantisClient if kind == "sync" else AsyncMantisClient
    return cls(endpoint, **kwargs)


@pytest.fixture
async def connect(kind, aiohttp_server) -> AsyncIterator[Callable[..., Awaitable[Driver]]]:
    """connect(service, **client_kwargs) -> Driver for a fresh server running `service`."""
    drivers: list[Driver] = []

    async def start(service: FakeService, **kwargs: Any) -> Driver:
        app = web.Application()
        app.router.add_get("/v1/runs/{run_id}/events", service.handle)
        server = await aiohttp_server(app)
        driver = Driver(make_client(kind, str(server.make_url("/")), **kwargs))
        drivers.append(driver)
        return driver

    yield start
    for driver in drivers:
        await driver.close()


def strip(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"event": e["event"], "id": e["id"], "data": e["data"]} for e in events]


async def test_stream_to_terminal(connect):
    log = make_log(rows=3)
    service = FakeService(log)
    driver = await connect(service)

    events = await driver.collect("stream_events", RUN)

    assert strip(events) == log
    assert events[-1]["data"]["halt_class"] is None
    assert service.requests == [{"since": None, "token": TOKEN, "accept": "text/event-stream"}]


async def test_non_json_data_is_kept_as_text(connect):
    log = make_log(rows=0)
    log.insert(1, {"event": "message", "id": "1-5", "data": "plain text, not JSON"})
    driver = await connect(FakeService(log))

    events = await driver.collect("stream_events", RUN)

    assert events[1] == {"event": "message", "id": "1-5", "data": "plain text, not JSON"}


async def test_stream_ends_when_server_closes_and_resumes_from_cursor(connect):
    log = make_log(rows=4)
    service = FakeService(log, script=[send(2)])
    driver = await connect(service)

    first = await driver.collect("stream_events", RUN)
    second = await driver.collect("stream_events", RUN, since=first[-1]["id"])

    assert strip(first) == log[:2]
    assert strip(second) == log[2:]
    assert [r["since"] for r in service.requests] == [None, log[1]["id"]]


async def test_follow_yields_every_event_once_across_reconnects(connect):
    log = make_log(rows=5)
    service = FakeService(log, script=[send(2), send(0), send(3)])
    driver = await connect(service)

    events = await driver.collect("follow", RUN, max_attempts=3)

    assert strip(events) == log
    assert [r["since"] for r in service.requests] == [None, "2-0", "2-0", "5-0"]


async def test_cursor_at_terminal_gets_204_and_no_events(connect):
    log = make_log(rows=1)
    service = FakeService(log)
    driver = await connect(service)

    assert await driver.collect("stream_events", RUN, since=log[-1]["id"]) == []
    assert await driver.collect("follow", RUN, since=log[-1]["id"]) == []
    assert len(service.requests) == 2  # follow did not reconnect after the 204


@pytest.mark.parametrize(
    ("response", "kind", "code"),
    [
        (error(401, "unauthorized", "missing or unknown token"), Unauthorized, "unauthorized"),
        (error(404, "run_not_found", "no such run"), RunNotFound, "run_not_found"),
        (error(400, "invalid_cursor", "bad cursor 'x'"), InvalidCursor, "invalid_cursor"),
        (error(400, "invalid_run_id", "bad run id"), BadRequest, "invalid_run_id"),
    ],
)
async def test_client_errors_raise_at_once_even_from_follow(connect, response, kind, code):
    # web.Response objects are single-use, so each call gets its own copy.
    def fresh() -> web.Response:
        return web.Response(
            status=response.status, body=response.body, content_type="application/json"
        )

    service = FakeService(make_log(), script=[fresh(), fresh()])
    driver = await connect(service)

    with pytest.raises(kind) as streamed:
        await driver.collect("stream_events", RUN)
    with pytest.raises(kind):
        await driver.collect("follow", RUN, max_attempts=5)

    assert streamed.value.code == code
    assert streamed.value.status == response.status
    assert json.loads(response.body)["error"]["message"] in str(streamed.value)
    assert len(service.requests) == 2  # follow did not retry


async def test_real_auth_and_cursor_checks_map_to_errors(connect):
    log = make_log()
    driver = await connect(FakeService(log), token="wrong-token")
    with pytest.raises(Unauthorized) as exc_info:
        await driver.collect("stream_events", RUN)
    assert isinstance(exc_info.value, PermissionError)

    driver = await connect(FakeService(log))
    with pytest.raises(RunNotFound) as not_found:
        await driver.collect("stream_events", "other-tenants-run")
    with pytest.raises(InvalidCursor) as bad_cursor:
        await driver.collect("stream_events", RUN, since="nonsense")
    assert isinstance(not_found.value, LookupError)
    assert isinstance(bad_cursor.value, ValueError)
    assert "nonsense" in bad_cursor.value.message


async def test_503_carries_retry_after(connect):
    unavailable = error(503, "unavailable", "store unreachable", **{"Retry-After": "7"})
    driver = await connect(FakeService(make_log(), script=[unavailable]))

    with pytest.raises(ServiceUnavailable) as exc_info:
        await driver.collect("stream_events", RUN)

    assert exc_info.value.retry_after == 7.0
    assert exc_info.value.code == "unavailable"
    assert isinstance(exc_info.value, MantisError)


async def test_follow_waits_out_retry_after_then_resumes(aiohttp_server):
    log = make_log(rows=2)
    unavailable = error(503, "unavailable", "store unreachable", **{"Retry-After": "1"})
    service = FakeService(log, script=[send(1), unavailable])
    app = web.Application()
    app.router.add_get("/v1/runs/{run_id}/events", service.handle)
    server = await aiohttp_server(app)

    async with AsyncMantisClient(str(server.make_url("/")), TOKEN) as client:
        started = time.monotonic()
        events = [e async for e in client.follow(RUN, max_attempts=3)]
        elapsed = time.monotonic() - started

    assert strip(events) == log
    assert elapsed >= 0.95
    assert [r["since"] for r in service.requests] == [None, "1-0", "1-0"]


async def test_hung_connection_ends_stream_quietly(connect):
    log = make_log(rows=3)
    service = FakeService(log)
    service.script = [hang_after(2, service)]
    driver = await connect(service, idle_timeout_s=0.5)

    started = time.monotonic()
    events = await driver.collect("stream_events", RUN)
    elapsed = time.monotonic() - started

    assert strip(events) == log[:2]
    assert 0.45 <= elapsed < 4
    service.new_request.set()  # let the hung handler finish


async def test_follow_reconnects_after_hung_connection(connect):
    log = make_log(rows=3)
    service = FakeService(log)
    service.script = [hang_after(2, service)]
    driver = await connect(service, idle_timeout_s=0.3)

    events = await driver.collect("follow", RUN, max_attempts=2)

    assert strip(events) == log
    assert [r["since"] for r in service.requests] == [None, "2-0"]


async def test_no_response_headers_counts_as_hung_too(connect):
    log = make_log(rows=1)
    service = FakeService(log, script=[STALL])
    driver = await connect(service, idle_timeout_s=0.3)

    assert await driver.collect("stream_events", RUN) == []
    events = await driver.collect("follow", RUN, max_attempts=2)

    assert strip(events) == log
    assert len(service.requests) == 2


async def test_pings_keep_a_slow_stream_alive(connect):
    log = make_log(rows=1)

    async def slow(resp: web.StreamResponse, pending: list[dict[str, Any]]) -> None:
        await resp.write(frame(pending[0]))
        for _ in range(8):  # 0.8 s of pings only: longer than idle_timeout_s
            await asyncio.sleep(0.1)
            await resp.write(b": ping\n\n")
        for event in pending[1:]:
            await resp.write(frame(event))

    driver = await connect(FakeService(log, script=[slow]), idle_timeout_s=0.4)

    events = await driver.collect("stream_events", RUN)

    assert strip(events) == log


async def test_gap_event_has_empty_id_and_does_not_move_the_cursor(connect):
    log = make_log(rows=2)
    gap = {"event": "gap", "id": "", "data": {"run_id": RUN, "after": "0-1", "resumed_from": "3-0"}}

    async def gap_then_rest(resp: web.StreamResponse, pending: list[dict[str, Any]]) -> None:
        await resp.write(frame(pending[0]))
        await resp.write(frame(pending[1]))
        await resp.write(frame(gap))  # after an id, so a sticky parser would repeat it
        await resp.write(frame(pending[2]))  # then the connection ends: soft limit

    service = FakeService(log, script=[gap_then_rest])
    driver = await connect(service)

    events = await driver.collect("follow", RUN, max_attempts=2)

    assert strip(events) == [*log[:2], gap, *log[2:]]
    assert [r["since"] for r in service.requests] == [None, "3-0"]


async def test_documented_loop_as_written(aiohttp_server, monkeypatch):
    log = make_log(rows=4)
    service = FakeService(log, script=[send(2), send(0), send(1)])
    app = web.Application()
    app.router.add_get("/v1/runs/{run_id}/events", service.handle)
    server = await aiohttp_server(app)
    monkeypatch.setenv("MANTIS_ENDPOINT", str(server.make_url("/")))
    monkeypatch.setenv("MANTIS_API_TOKEN", TOKEN)
    run_id = RUN

    def documented() -> tuple[MantisClient, list[dict[str, Any]]]:
        seen: list[dict[str, Any]] = []
        # ---- the README's loop, verbatim (plus `seen.append`) ----
        from mantis_agent.client import MantisClient

        client = MantisClient.from_env()
        last_id = ""
        while True:
            for event in client.stream_events(run_id, since=last_id):
                seen.append(dict(event))
                last_id = event["id"] or last_id
                if event["event"] == "terminal":
                    break
            else:
                continue
            break
        # ---- end of the documented loop ----
        return client, seen

    client, seen = await asyncio.to_thread(documented)
    client.close()

    assert strip(seen) == log
    assert [r["since"] for r in service.requests] == [None, "2-0", "2-0", "3-0"]


async def test_connection_refused_is_a_clear_error(kind):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    driver = Driver(make_client(kind, f"http://127.0.0.1:{port}"))
    try:
        with pytest.raises(MantisConnectionError) as exc_info:
            await driver.collect("stream_events", RUN)
        started = time.monotonic()
        with pytest.raises(MantisConnectionError):
            await driver.collect("follow", RUN, max_attempts=3, backoff_base_s=0.01)
        assert time.monotonic() - started < 2
    finally:
        await driver.close()

    assert isinstance(exc_info.value, ConnectionError)
    assert f"127.0.0.1:{port}" in str(exc_info.value)
    assert "connect" in str(exc_info.value).lower()


async def test_token_never_leaks(connect, caplog):
    caplog.set_level(logging.DEBUG)
    log = make_log(rows=1)
    unavailable = error(503, "unavailable", "store unreachable")
    service = FakeService(log, script=[unavailable])
    driver = await connect(service, idle_timeout_s=5)

    events = await driver.collect("follow", RUN, max_attempts=2, backoff_base_s=0.01)
    bad = await connect(FakeService(log), token=TOKEN + "-revoked")
    with pytest.raises(Unauthorized) as exc_info:
        await bad.collect("stream_events", RUN)
    with pytest.raises(ConfigurationError) as bad_token:
        MantisClient("http://127.0.0.1:1", TOKEN + "\r\nX-Injected: 1")

    assert strip(events) == log  # the run did stream, with the token sent
    assert service.requests[-1]["token"] == TOKEN
    assert caplog.records  # httpx/httpcore and the SDK did log at DEBUG
    texts = [
        repr(driver.client),
        str(driver.client),
        str(exc_info.value),
        repr(exc_info.value),
        str(bad_token.value),
        caplog.text,
    ]
    assert [t for t in texts if "S3CRET" in t] == []
    assert "127.0.0.1" in repr(driver.client)


def test_from_env_names_the_missing_variable(monkeypatch):
    monkeypatch.delenv("MANTIS_ENDPOINT", raising=False)
    monkeypatch.setenv("MANTIS_API_TOKEN", TOKEN)
    with pytest.raises(ConfigurationError, match="MANTIS_ENDPOINT"):
        MantisClient.from_env()

    monkeypatch.setenv("MANTIS_ENDPOINT", "http://127.0.0.1:8080")
    monkeypatch.delenv("MANTIS_API_TOKEN")
    with pytest.raises(ConfigurationError, match="MANTIS_API_TOKEN"):
        AsyncMantisClient.from_env()

    monkeypatch.setenv("MANTIS_API_TOKEN", TOKEN)
    monkeypatch.setenv("MANTIS_IDLE_TIMEOUT_S", "soon")
    with pytest.raises(ConfigurationError, match="MANTIS_IDLE_TIMEOUT_S"):
        MantisClient.from_env()

    monkeypatch.setenv("MANTIS_IDLE_TIMEOUT_S", "12.5")
    with MantisClient.from_env() as client:
        assert repr(client) == "MantisClient(endpoint='http://127.0.0.1:8080', idle_timeout_s=12.5)"


def test_injected_http_client_is_not_closed_by_the_sdk():
    with httpx.Client() as http:
        MantisClient("http://127.0.0.1:8080", TOKEN, http=http).close()
        assert not http.is_closed


class Ceiling(random.Random):
    """Jitter that always picks the top of the range, to read the bounds off."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_backoff_doubles_to_the_cap_and_resets():
    backoff = Backoff(base_s=1.0, cap_s=8.0, rng=Ceiling())
    assert [backoff.next_delay() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    backoff.reset()
    assert backoff.next_delay() == 1.0


def test_backoff_jitter_spans_the_whole_range():
    backoff = Backoff(base_s=1.0, cap_s=1.0, rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(200)]
    assert all(0 <= d <= 1.0 for d in delays)
    assert min(delays) < 0.1 and max(delays) > 0.9  # full jitter, not base ± a little


def test_follower_takes_base_from_server_retry_and_resets_after_success():
    follower = Follower(RUN, "", max_attempts=3, backoff_base_s=2, backoff_cap_s=30, rng=Ceiling())
    closed = Connection(outcome=Outcome.CLOSED, established=True, retry_ms=500)
    idle = Connection(outcome=Outcome.IDLE, established=True)
    delivered = Connection(outcome=Outcome.DROPPED, established=True, events=1)

    assert follower.after_stream(closed) == 0.5  # base is now the server's retry: 500
    assert follower.after_stream(idle) == 1.0  # failures double it
    assert follower.after_stream(idle) == 2.0
    assert follower.after_stream(delivered) == 0.5  # a connection that delivered resets
    assert follower.after_stream(Connection(outcome=Outcome.TERMINAL)) is None
    assert follower.after_stream(Connection(outcome=Outcome.NO_CONTENT)) is None
    follower.after_stream(idle)
    follower.after_stream(idle)
    with pytest.raises(MantisConnectionError, match="3 consecutive attempts"):
        follower.after_stream(idle)


def test_follower_honours_retry_after_and_bounds_attempts():
    follower = Follower(
        RUN, "", max_attempts=2, backoff_base_s=0.01, backoff_cap_s=0.02, rng=random.Random(1)
    )
    busy = ServiceUnavailable("busy", status=503, retry_after=3.0)
    assert follower.after_error(busy) == 3.0
    with pytest.raises(ServiceUnavailable):
        follower.after_error(busy)  # second consecutive failure: max_attempts reached
    with pytest.raises(RunNotFound):
        Follower(RUN, "", max_attempts=None, backoff_base_s=1, backoff_cap_s=1).after_error(
            RunNotFound("gone", status=404)
        )


def test_retry_after_parsing():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past
