"""The SDK against the real service (`python -m service`) on a real redis-server.

A publisher thread writes a live run through `runner_bridge` while a client reads it.
The sync client reads in the test's thread; the async one in `asyncio.run` there, so
both run the same scenarios. The publisher paces itself on what the client has seen
(rows received, connections made, pings read): no sleeps, every wait bounded.

What the client sees is tapped at the httpx transport (patched on the class, so the
SDK's own HTTP client is the one measured): connection attempts, refused connections,
response statuses and `: ping` comments, which `httpx_sse` does not surface.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
import traceback
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import aclosing
from functools import partial
from typing import Any

import httpx
import pytest

from mantis_agent import (
    AsyncMantisClient,
    BadRequest,
    InvalidCursor,
    MantisError,
    RunNotFound,
    Unauthorized,
)
from mantis_agent.client import Event, MantisClient
from runlog.calls import LogLimits
from runner_bridge import Bridge
from runner_bridge.bridge import RunHandle

from .conftest import TOKENS, ServiceProcess

KINDS = ["sync", "async"]
WAIT_S = 15.0  # bound on any single wait for the client or the service
WINDOW = 8  # rows the client may not have received yet: some are always in flight
SEGMENT_CAP = 20_000  # bound on rows published while waiting for one reconnect
SOFT_LIMIT = {"MANTIS_STREAM_MAX_S": "1.5"}
RECONNECTS = 3  # soft-limit reconnects each live run must go through
FAST_BACKOFF: dict[str, Any] = {"backoff_base_s": 0.02, "backoff_cap_s": 0.2}
WRONG_TOKEN = "wrong-token-5a1c9e77"
PING = b": ping\n"


class Aborted(Exception):
    """The other side of the test failed; stop waiting for it."""


class Tracker:
    """What the client has seen, shared by the reading thread and the publisher thread."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._aborted = False
        self.events: list[Event] = []
        self.seen_at: list[float] = []
        self.rows = 0
        self.requests = 0
        self.refused = 0
        self.statuses: list[int] = []
        self.pings = 0
        # How response bodies ended: "ended" by the server, cleanly (its soft limit);
        # "timed_out" (the client's idle timeout); "broken" (another transport error).
        self.bodies: Counter[str] = Counter()

    @contextlib.contextmanager
    def _changing(self) -> Iterator[None]:
        with self._cond:
            yield
            self._cond.notify_all()

    def saw(self, event: Event) -> None:
        with self._changing():
            self.events.append(event)
            self.seen_at.append(time.monotonic())
            if event["event"] == "step":
                self.rows += 1

    def requested(self) -> None:
        with self._changing():
            self.requests += 1

    def was_refused(self) -> None:
        with self._changing():
            self.refused += 1

    def responded(self, status: int) -> None:
        with self._changing():
            self.statuses.append(status)

    def pinged(self, count: int) -> None:
        if count:
            with self._changing():
                self.pings += count

    def body_ended(self, how: str) -> None:
        with self._changing():
            self.bodies[how] += 1

    def has_rows(self, n: int) -> bool:
        return self.rows >= n

    def has_requests(self, n: int) -> bool:
        return self.requests >= n

    def abort(self) -> None:
        with self._changing():
            self._aborted = True

    def wait_for(self, predicate: Callable[[], bool], what: str) -> None:
        with self._cond:
            done = self._cond.wait_for(lambda: self._aborted or predicate(), WAIT_S)
            if self._aborted:
                raise Aborted(what)
            if not done:
                raise AssertionError(f"timed out after {WAIT_S}s waiting for {what}")


class BodyTap:
    """Watches one response body: counts `: ping` comments (also one split over two
    chunks) and tells the tracker whether the server ended the body or it broke."""

    def __init__(self, tracker: Tracker) -> None:
        self._tracker = tracker
        self._tail = b""

    def feed(self, chunk: bytes) -> None:
        data = self._tail + chunk
        self._tracker.pinged(data.count(PING))
        # Shorter than PING, so no ping counted now can be counted again.
        self._tail = data[-(len(PING) - 1) :]

    def ended(self) -> None:
        self._tracker.body_ended("ended")

    def broke(self, exc: httpx.TransportError) -> None:
        timed_out = isinstance(exc, httpx.TimeoutException)
        self._tracker.body_ended("timed_out" if timed_out else "broken")


class TapStream(httpx.SyncByteStream):
    def __init__(self, inner: Any, tracker: Tracker) -> None:
        self._inner = inner
        self._tap = BodyTap(tracker)

    def __iter__(self) -> Iterator[bytes]:
        # A body the client closes early (after the terminal event) is neither.
        try:
            for chunk in self._inner:
                self._tap.feed(chunk)
                yield chunk
        except httpx.TransportError as exc:
            self._tap.broke(exc)
            raise
        self._tap.ended()

    def close(self) -> None:
        self._inner.close()


class AsyncTapStream(httpx.AsyncByteStream):
    def __init__(self, inner: Any, tracker: Tracker) -> None:
        self._inner = inner
        self._tap = BodyTap(tracker)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                self._tap.feed(chunk)
                yield chunk
        except httpx.TransportError as exc:
            self._tap.broke(exc)
            raise
        self._tap.ended()

    async def aclose(self) -> None:
        await self._inner.aclose()


@pytest.fixture
def tracker(monkeypatch: pytest.MonkeyPatch) -> Tracker:
    """A Tracker fed by every httpx transport in this process (only the SDK uses httpx)."""
    seen = Tracker()
    sync_send = httpx.HTTPTransport.handle_request
    async_send = httpx.AsyncHTTPTransport.handle_async_request

    def handle_request(self: httpx.HTTPTransport, request: httpx.Request) -> httpx.Response:
        seen.requested()
        try:
            response = sync_send(self, request)
        except httpx.ConnectError:
            seen.was_refused()
            raise
        seen.responded(response.status_code)
        response.stream = TapStream(response.stream, seen)
        return response

    async def handle_async_request(
        self: httpx.AsyncHTTPTransport, request: httpx.Request
    ) -> httpx.Response:
        seen.requested()
        try:
            response = await async_send(self, request)
        except httpx.ConnectError:
            seen.was_refused()
            raise
        seen.responded(response.status_code)
        response.stream = AsyncTapStream(response.stream, seen)
        return response

    monkeypatch.setattr(httpx.HTTPTransport, "handle_request", handle_request)
    monkeypatch.setattr(httpx.AsyncHTTPTransport, "handle_async_request", handle_async_request)
    return seen


@pytest.fixture
def bridge(redis_url: str) -> Iterator[Bridge]:
    with Bridge.from_url(redis_url, limits=LogLimits()) as b:
        yield b


# -- reading ----------------------------------------------------------------------------


def read(
    kind: str,
    base: str,
    method: str,
    run_id: str,
    *,
    tracker: Tracker | None = None,
    since: str = "",
    token: str = TOKENS["acme"],
    idle_timeout_s: float = 10.0,
    **follow_kwargs: Any,
) -> list[Event]:
    """Run `stream_events` or `follow` of the sync or async client to its end."""
    if kind == "sync":
        with MantisClient(base, token, idle_timeout_s=idle_timeout_s) as client:
            if method == "follow":
                events = client.follow(run_id, since, **follow_kwargs)
            else:
                events = client.stream_events(run_id, since)
            out = []
            for event in events:
                out.append(event)
                if tracker is not None:
                    tracker.saw(event)
            return out

    async def read_async() -> list[Event]:
        async with AsyncMantisClient(base, token, idle_timeout_s=idle_timeout_s) as client:
            if method == "follow":
                events = client.follow(run_id, since, **follow_kwargs)
            else:
                events = client.stream_events(run_id, since)
            out = []
            async with aclosing(events):
                async for event in events:
                    out.append(event)
                    if tracker is not None:
                        tracker.saw(event)
            return out

    return asyncio.run(read_async())


# -- publishing -------------------------------------------------------------------------


@contextlib.contextmanager
def publishing(
    tracker: Tracker, handle: RunHandle, body: Callable[[], int]
) -> Iterator[Future[int]]:
    """Run `body` in a thread while the test reads; a failure on either side ends both.

    If the publisher fails the run is cancelled, so the reader gets a terminal event
    and stops; if the reader fails the publisher's waits raise `Aborted`.
    """

    def guarded() -> int:
        try:
            return body()
        except BaseException:
            with contextlib.suppress(Exception):
                handle.finish("cancelled")
            raise

    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(guarded)
        try:
            yield future
        except BaseException:
            tracker.abort()
            raise


def publish_until(
    handle: RunHandle,
    tracker: Tracker,
    step: int,
    *,
    requests: int = 0,
    stop_at: int | None = None,
) -> int:
    """Append rows numbered from `step`, at most WINDOW of them unreceived, until the
    client has made `requests` connection attempts and row `stop_at` is written."""

    def done() -> bool:
        return tracker.requests >= requests and (stop_at is None or step >= stop_at)

    first = step
    while not done():
        if step - first >= SEGMENT_CAP:  # a very fast machine: stop writing, wait for the goal
            tracker.wait_for(done, "the client to reconnect")
            break
        floor = step - WINDOW + 1
        tracker.wait_for(partial(tracker.has_rows, floor), f"the client to receive {floor} rows")
        handle.append({"kind": "step", "step_index": step, "type": "click"})
        step += 1
    return step


def publish_across_reconnects(handle: RunHandle, tracker: Tracker) -> int:
    """Rows flowing without pause through RECONNECTS soft-limit reconnects, then complete."""
    tracker.wait_for(partial(tracker.has_requests, 1), "the client to connect")
    step = 0
    for n in range(RECONNECTS):
        # Rows keep coming while the stream nears its soft limit, during the reconnect
        # and across the new stream's replay/live seam.
        step = publish_until(handle, tracker, step, requests=n + 2)
    step = publish_until(handle, tracker, step, stop_at=step + 20)
    handle.finish("complete")
    return step


def open_live_run(bridge: Bridge, run_id: str) -> RunHandle:
    handle = bridge.open_run(run_id, tenant="acme")
    handle.set_phase("running")
    return handle


# -- checking ---------------------------------------------------------------------------


def assert_whole_run(events: list[Event], rows: int, phase: str = "complete") -> None:
    """queued, running, rows 0..rows-1 each once and in order, `phase`, terminal."""
    steps = [e["data"]["step_index"] for e in events if e["event"] == "step"]  # type: ignore[index]
    if steps != list(range(rows)):
        dupes = len(steps) - len(set(steps))
        missing = sorted(set(range(rows)) - set(steps))[:10]
        first_bad = next((i for i, s in enumerate(steps) if s != i), None)
        pytest.fail(
            f"rows not exactly once in order: got {len(steps)} of {rows}, {dupes} duplicates, "
            f"missing (first 10) {missing}, first out of place at position {first_bad}"
        )
    others = [(e["event"], e["data"]) for e in events if e["event"] != "step"]
    assert [name for name, _ in others] == ["phase", "phase", "phase", "terminal"]
    assert [data["phase"] for _, data in others] == ["queued", "running", phase, phase]  # type: ignore[index]
    assert events[-1]["event"] == "terminal"
    ids = [e["id"] for e in events]
    assert all(ids)
    assert len(set(ids)) == len(ids)


def assert_no_secret(*texts: str) -> None:
    for secret in (*TOKENS.values(), WRONG_TOKEN):
        leaks = [t for t in texts if secret in t]
        assert leaks == [], f"a token appears in: {leaks[0][:300]!r}"


# -- 1. the documented loop -------------------------------------------------------------


def test_documented_loop_across_soft_limit_reconnects(
    redis_url, spawn_service, bridge, tracker, monkeypatch
):
    svc = spawn_service(redis_url, **SOFT_LIMIT)
    monkeypatch.setenv("MANTIS_ENDPOINT", svc.base)
    monkeypatch.setenv("MANTIS_API_TOKEN", TOKENS["acme"])
    handle = open_live_run(bridge, "documented")

    with publishing(tracker, handle, lambda: publish_across_reconnects(handle, tracker)) as pub:
        # ---- the documented usage, as written (plus `tracker.saw`, the user's code) ----
        from mantis_agent.client import MantisClient

        client = MantisClient.from_env()
        last_id = ""
        while True:
            for event in client.stream_events(handle.run_id, since=last_id):
                tracker.saw(event)
                last_id = event["id"] or last_id
                if event["event"] == "terminal":
                    break
            else:
                continue
            break
        # ---- end of the documented usage ----
        client.close()
        rows = pub.result(WAIT_S)

    assert tracker.requests >= RECONNECTS + 1
    assert set(tracker.statuses) == {200}
    # The reconnects were the service ending streams at its soft limit: nothing broke.
    assert tracker.bodies["ended"] >= RECONNECTS
    assert tracker.bodies["broken"] == tracker.bodies["timed_out"] == 0
    assert_whole_run(tracker.events, rows)
    assert last_id == tracker.events[-1]["id"]
    # The log as the service replays it once the run is over is what was seen live.
    assert read("sync", svc.base, "follow", "documented") == tracker.events


# -- 2. follow --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_follow_live_run_across_soft_limit_reconnects(
    kind, redis_url, spawn_service, bridge, tracker
):
    svc = spawn_service(redis_url, **SOFT_LIMIT)
    handle = open_live_run(bridge, "followed")

    with publishing(tracker, handle, lambda: publish_across_reconnects(handle, tracker)) as pub:
        live = read(kind, svc.base, "follow", "followed", tracker=tracker, **FAST_BACKOFF)
        rows = pub.result(WAIT_S)

    assert tracker.requests >= RECONNECTS + 1
    assert set(tracker.statuses) == {200}
    # The reconnects were the service ending streams at its soft limit: nothing broke.
    assert tracker.bodies["ended"] >= RECONNECTS
    assert tracker.bodies["broken"] == tracker.bodies["timed_out"] == 0
    assert_whole_run(live, rows)

    # Started after the run finished: the whole run, on one connection, then it stops.
    before = tracker.requests
    assert read(kind, svc.base, "follow", "followed", **FAST_BACKOFF) == live
    assert tracker.requests == before + 1

    # From the terminal event's id: nothing; the service answers 204 and follow stops.
    after_terminal = read(kind, svc.base, "follow", "followed", since=live[-1]["id"])
    assert after_terminal == []
    assert tracker.statuses[before + 1 :] == [204]


# -- 3. the service killed and restarted mid-stream -------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_follow_survives_service_killed_and_restarted(
    kind, redis_url, spawn_service, bridge, tracker
):
    first = spawn_service(redis_url)
    handle = open_live_run(bridge, "killed")
    restarted: list[ServiceProcess] = []

    def publish() -> int:
        tracker.wait_for(partial(tracker.has_requests, 1), "the client to connect")
        step = publish_until(handle, tracker, 0, stop_at=50)
        # Mid-stream, with up to WINDOW rows not yet delivered.
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(timeout=WAIT_S)
        for _ in range(20):  # written while no service runs
            handle.append({"kind": "step", "step_index": step, "type": "click"})
            step += 1
        tracker.wait_for(lambda: tracker.refused >= 1, "follow to retry a refused connection")
        restarted.append(spawn_service(redis_url, port=first.port))
        step = publish_until(handle, tracker, step, stop_at=120)
        handle.finish("complete")
        return step

    with publishing(tracker, handle, publish) as pub:
        live = read(
            kind, first.base, "follow", "killed", tracker=tracker, max_attempts=100, **FAST_BACKOFF
        )
        rows = pub.result(WAIT_S)

    assert first.proc.returncode == -signal.SIGKILL
    assert restarted and restarted[0].proc.poll() is None
    assert tracker.refused >= 1
    assert tracker.bodies["broken"] == 1  # the stream the kill cut
    assert_whole_run(live, rows)
    assert read(kind, first.base, "follow", "killed") == live


# -- 4. errors --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_errors_from_the_real_service(kind, redis_url, spawn_service, bridge, tracker):
    svc = spawn_service(redis_url)
    bridge.open_run("mine", tenant="acme")
    bridge.open_run("theirs", tenant="other")
    cases: list[tuple[dict[str, Any], type[MantisError], str]] = [
        ({"run_id": "mine", "token": WRONG_TOKEN}, Unauthorized, "unauthorized"),
        ({"run_id": "nope"}, RunNotFound, "run_not_found"),
        ({"run_id": "theirs"}, RunNotFound, "run_not_found"),
        ({"run_id": "mine", "since": "not a cursor"}, InvalidCursor, "invalid_cursor"),
        ({"run_id": "bad id!"}, BadRequest, "invalid_run_id"),
    ]
    texts: list[str] = []
    not_found: dict[str, str] = {}
    for kwargs, error, code in cases:
        for method in ("stream_events", "follow"):
            with pytest.raises(error) as caught:  # follow does not retry these either
                read(kind, svc.base, method, **kwargs)
            exc = caught.value
            assert (type(exc), exc.code) == (error, code), (method, kwargs)
            texts += [str(exc), repr(exc), exc.message, "".join(traceback.format_exception(exc))]
            if code == "run_not_found":
                not_found[kwargs["run_id"]] = str(exc).replace(kwargs["run_id"], "RUN")

    assert tracker.requests == 2 * len(cases)  # one each: follow retried none of them
    # Another tenant's run and a missing one are indistinguishable.
    assert not_found["theirs"] == not_found["nope"]
    assert_no_secret(*texts, svc.log.read_text())


# -- 5. hung connections ----------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_silent_stream_ends_after_idle_timeout(kind, redis_url, spawn_service, bridge, tracker):
    svc = spawn_service(redis_url, MANTIS_HEARTBEAT_S="30")
    open_live_run(bridge, "quiet")
    idle_timeout_s = 0.5

    started = time.monotonic()
    events = read(kind, svc.base, "stream_events", "quiet", idle_timeout_s=idle_timeout_s)
    elapsed = time.monotonic() - started

    assert [e["data"]["phase"] for e in events] == ["queued", "running"]  # type: ignore[index]
    assert idle_timeout_s <= elapsed < idle_timeout_s + 5
    assert tracker.requests == 1
    assert tracker.pings == 0
    assert tracker.bodies == {"timed_out": 1}  # the client gave up; the server did not end it


@pytest.mark.parametrize("kind", KINDS)
def test_pings_keep_a_quiet_stream_open(kind, redis_url, spawn_service, bridge, tracker):
    svc = spawn_service(redis_url, MANTIS_HEARTBEAT_S="0.2")
    handle = open_live_run(bridge, "pinged")
    idle_timeout_s = 0.8
    quiet_pings = 10  # >= 9 heartbeat intervals of 0.2 s: longer than 2 idle timeouts

    def publish() -> int:
        tracker.wait_for(lambda: len(tracker.events) >= 2, "the client to replay the phases")
        pings = tracker.pings
        tracker.wait_for(lambda: tracker.pings >= pings + quiet_pings, "pings")
        handle.append({"kind": "step", "step_index": 0, "type": "click"})
        tracker.wait_for(lambda: tracker.rows >= 1, "the client to receive the row")
        handle.finish("complete")
        return 1

    with publishing(tracker, handle, publish) as pub:
        events = read(
            kind,
            svc.base,
            "stream_events",
            "pinged",
            tracker=tracker,
            idle_timeout_s=idle_timeout_s,
        )
        rows = pub.result(WAIT_S)

    assert_whole_run(events, rows)
    assert tracker.requests == 1  # one stream_events call, one connection, to the end
    assert tracker.bodies["timed_out"] == 0
    assert tracker.pings >= quiet_pings
    quiet_s = tracker.seen_at[2] - tracker.seen_at[1]
    assert quiet_s > 2 * idle_timeout_s
