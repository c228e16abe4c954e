"""The service's Prometheus metrics: every name in one place, and ``GET /metrics``.

Counting must not cost the hot path. Labelled children are bound once (a small dict keyed
by the label values, filled on first use) so an increment is one method call with no label
lookup, and the hub counts a fan-out burst with one increment, not one per client event.
Gauges that describe state elsewhere (hub subscriptions, the work queue in Redis) are read
when Prometheus scrapes, not kept up to date on every change.

Label sets are bounded: stream ``kind`` (run, feed), ``tenant_class`` (configured, see
``MANTIS_METRICS_TENANT_CLASSES``; a tenant not listed is ``default``), the pod's own name,
a route's template (never a run id), an end reason or an outcome from a fixed list.

Other parts of the service plug in with one call each: ``record_submit``, ``record_poll``,
``record_stream_rejected``, ``record_webhook_delivery``, ``add_scrape_hook`` (for a gauge
read at scrape time, such as pending webhook deliveries).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ParamSpec, TypeVar

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import gc_collector as _gc
from prometheus_client import platform_collector as _platform
from prometheus_client import process_collector as _process
from redis.exceptions import RedisError

from runlog.keys import FEED_PREFIX, QUEUE_GROUP, queue_key

from .settings import Settings

ScrapeHook = Callable[[web.Application], Awaitable[None]]

log = logging.getLogger("mantis.metrics")

# The classic text format (0.0.4): what every Prometheus version scrapes.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# A scrape never waits long on Redis: the queue gauges are skipped (and counted) instead.
SCRAPE_REDIS_TIMEOUT_S = 1.0
SCRAPE_HOOK_TIMEOUT_S = 1.0

REGISTRY = CollectorRegistry(auto_describe=True)
_process.ProcessCollector(registry=REGISTRY)
_platform.PlatformCollector(registry=REGISTRY)
_gc.GCCollector(registry=REGISTRY)

DEFAULT_CLASS = "default"

# -- streams ---------------------------------------------------------------------------

STREAMS_OPEN = Gauge(
    "mantis_streams_open",
    "SSE streams open on this pod, replaying or live.",
    ["pod", "kind", "tenant_class"],
    registry=REGISTRY,
)
STREAM_SECONDS = Histogram(
    "mantis_stream_duration_seconds",
    "How long SSE streams lasted, by why they ended.",
    ["kind", "reason"],
    buckets=(0.1, 1, 5, 15, 30, 60, 120, 300, 450, 600, 900, 1800),
    registry=REGISTRY,
)
STREAM_RESUMES = Counter(
    "mantis_stream_resumes_total",
    "SSE streams opened with a cursor (Last-Event-ID or since).",
    ["kind"],
    registry=REGISTRY,
)
EVENTS_DELIVERED = Counter(
    "mantis_events_delivered_total",
    "Live events written to streaming clients (one per client and event).",
    registry=REGISTRY,
)
EVENTS_REPLAYED = Counter(
    "mantis_events_replayed_total",
    "Stored events written to streaming clients while they caught up (replay).",
    registry=REGISTRY,
)
GAP_EVENTS = Counter(
    "mantis_gap_events_total",
    "gap events sent: a cursor the log could no longer vouch for.",
    registry=REGISTRY,
)
SLOW_CLIENT_CUTS = Counter(
    "mantis_slow_client_cuts_total",
    "Streams cut because the client's unsent backlog passed MANTIS_CLIENT_BACKLOG_BYTES.",
    registry=REGISTRY,
)
STREAM_REJECTIONS = Counter(
    "mantis_stream_rejections_total",
    "Streaming requests turned away before streaming, by reason.",
    ["reason"],
    registry=REGISTRY,
)
HUB_SUBSCRIPTIONS = Gauge(
    "mantis_hub_subscriptions",
    "Live channels (runs and tenant feeds) this pod is subscribed to.",
    registry=REGISTRY,
)
PUBSUB_RECONNECTS = Counter(
    "mantis_pubsub_reconnects_total",
    "Times the pod's pub/sub connection was lost and opened again.",
    registry=REGISTRY,
)

# -- Redis -----------------------------------------------------------------------------

REDIS_SECONDS = Histogram(
    "mantis_redis_command_seconds",
    "Latency of the service's Redis reads and writes, by operation.",
    ["op"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
    registry=REGISTRY,
)
REDIS_ERRORS = Counter(
    "mantis_redis_errors_total",
    "Redis operations that failed (connection lost, timeout, error reply), by operation.",
    ["op"],
    registry=REGISTRY,
)

# -- HTTP ------------------------------------------------------------------------------

HTTP_REQUESTS = Counter(
    "mantis_http_requests_total",
    "Requests answered, by method, route template and status.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
HTTP_SECONDS = Histogram(
    "mantis_http_request_duration_seconds",
    "Time to answer non-streaming requests, by route template.",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)

# -- runs, queue, webhooks (incremented by their modules) ------------------------------

SUBMITS = Counter(
    "mantis_submits_total",
    "POST /v1/predict submits, by outcome (created, replayed, exists, reused, invalid).",
    ["outcome"],
    registry=REGISTRY,
)
POLLS = Counter(
    "mantis_polls_total",
    "GET /v1/runs/{run_id} polls, by outcome (ok, not_modified, not_found).",
    ["outcome"],
    registry=REGISTRY,
)
QUEUE_LENGTH = Gauge(
    "mantis_queue_length",
    "Entries in the work queue stream (XLEN), read at scrape time.",
    registry=REGISTRY,
)
QUEUE_WAITING = Gauge(
    "mantis_queue_waiting",
    "Queued runs no worker has claimed yet (the consumer group's lag), read at scrape time.",
    registry=REGISTRY,
)
QUEUE_PENDING = Gauge(
    "mantis_queue_pending",
    "Runs claimed by a worker and not yet acknowledged (XPENDING), read at scrape time.",
    registry=REGISTRY,
)
QUEUE_OLDEST_AGE = Gauge(
    "mantis_queue_oldest_waiting_age_seconds",
    "Age of the oldest run waiting for a worker (0 when none waits), read at scrape time.",
    registry=REGISTRY,
)
QUEUE_SCRAPE_ERRORS = Counter(
    "mantis_queue_scrape_errors_total",
    "Scrapes that could not read the work queue in time (its gauges keep their last value).",
    registry=REGISTRY,
)
WEBHOOK_DELIVERIES = Counter(
    "mantis_webhook_deliveries_total",
    "Webhook delivery attempts, by outcome (delivered, retry, failed).",
    ["outcome"],
    registry=REGISTRY,
)
WEBHOOK_PENDING = Gauge(
    "mantis_webhook_pending",
    "Webhook deliveries waiting for their next attempt, read at scrape time.",
    registry=REGISTRY,
)


# -- configuration ---------------------------------------------------------------------

_pod = "local"
_classes: Mapping[str, str] = {}


def configure(*, pod: str, tenant_classes: Mapping[str, str]) -> None:
    """Set this process's pod name and tenant classes (once, when the app is built)."""
    global _pod, _classes
    _pod = pod
    _classes = dict(tenant_classes)


def configure_metrics(settings: Settings) -> None:
    """``configure`` from the settings (MANTIS_POD_NAME, MANTIS_METRICS_TENANT_CLASSES)."""
    configure(
        pod=settings.pod_name or socket.gethostname(),
        tenant_classes=dict(settings.metrics_tenant_classes),
    )


def tenant_class(tenant: str) -> str:
    """The bounded label a tenant counts under."""
    return _classes.get(tenant, DEFAULT_CLASS)


def stream_kind(log_name: str) -> str:
    """``feed`` for a tenant feed's log, else ``run``."""
    return "feed" if log_name.startswith(FEED_PREFIX) else "run"


_P = ParamSpec("_P")
_T = TypeVar("_T")
_V = TypeVar("_V")


def _bound(family: Any) -> Callable[..., Any]:
    """A cache of ``family.labels(*values)``: each child is looked up once per process."""

    @functools.cache
    def child(*values: str) -> Any:
        return family.labels(*values)

    return child


_open_child = _bound(STREAMS_OPEN)
_seconds_child = _bound(STREAM_SECONDS)
_resume_child = _bound(STREAM_RESUMES)
_redis_seconds_child = _bound(REDIS_SECONDS)
_redis_errors_child = _bound(REDIS_ERRORS)
_http_child = _bound(HTTP_REQUESTS)
_http_seconds_child = _bound(HTTP_SECONDS)
_rejection_child = _bound(STREAM_REJECTIONS)
_submit_child = _bound(SUBMITS)
_poll_child = _bound(POLLS)
_webhook_child = _bound(WEBHOOK_DELIVERIES)


class StreamMeter:
    """One SSE stream's share of the metrics: open from creation until ``close``."""

    __slots__ = ("_closed", "_gauge", "kind", "started")

    def __init__(self, log_name: str, tenant: str, *, resumed: bool) -> None:
        self.kind = stream_kind(log_name)
        self.started = time.monotonic()
        self._closed = False
        self._gauge = _open_child(_pod, self.kind, tenant_class(tenant))
        self._gauge.inc()
        if resumed:
            _resume_child(self.kind).inc()

    def close(self, reason: str) -> None:
        """The stream ended (``reason`` is one of the hub's end reasons)."""
        if self._closed:
            return
        self._closed = True
        self._gauge.dec()
        _seconds_child(self.kind, reason).observe(time.monotonic() - self.started)


def count_delivered(n: int) -> None:
    """Live events written in one fan-out burst (call once per burst)."""
    if n:
        EVENTS_DELIVERED.inc(n)


def count_replayed(n: int) -> None:
    """Stored events a stream sent while catching up (call once per batch or stream)."""
    if n:
        EVENTS_REPLAYED.inc(n)


def count_gap() -> None:
    """A gap event was sent (stream or page)."""
    GAP_EVENTS.inc()


def count_slow_cut() -> None:
    """A slow client was cut."""
    SLOW_CLIENT_CUTS.inc()


def count_reconnect() -> None:
    """The pub/sub connection was lost (the hub opens it again)."""
    PUBSUB_RECONNECTS.inc()


def record_stream_rejected(reason: str) -> None:
    """A streaming request was turned away: ``too_many_streams``, ``draining``, ``unavailable``."""
    _rejection_child(reason).inc()


def record_submit(outcome: str) -> None:
    """A submit's outcome: ``created``, ``replayed``, ``exists``, ``reused``, ``invalid``."""
    _submit_child(outcome).inc()


def record_poll(outcome: str) -> None:
    """A poll's outcome: ``ok``, ``not_modified``, ``not_found``."""
    _poll_child(outcome).inc()


def record_webhook_delivery(outcome: str) -> None:
    """A webhook attempt's outcome: ``delivered``, ``retry``, ``failed``."""
    _webhook_child(outcome).inc()


def set_webhook_pending(n: int) -> None:
    """Deliveries waiting for their next attempt (from a scrape hook)."""
    WEBHOOK_PENDING.set(n)


def record_http(method: str, route: str, status: int, seconds: float | None) -> None:
    """One answered request; ``seconds`` None for a stream (its duration is the stream's)."""
    _http_child(method, route, str(status)).inc()
    if seconds is not None:
        _http_seconds_child(method, route).observe(seconds)


def timed(op: str) -> Callable[[Callable[_P, Awaitable[_T]]], Callable[_P, Awaitable[_T]]]:
    """Decorate an async Redis operation: its latency and failures under ``op``."""

    def wrap(func: Callable[_P, Awaitable[_T]]) -> Callable[_P, Awaitable[_T]]:
        seconds = _redis_seconds_child(op)
        errors = _redis_errors_child(op)

        @functools.wraps(func)
        async def run(*args: _P.args, **kwargs: _P.kwargs) -> _T:
            start = time.perf_counter()
            try:
                return await func(*args, **kwargs)
            except (RedisError, OSError, TimeoutError):
                errors.inc()
                raise
            finally:
                seconds.observe(time.perf_counter() - start)

        return run

    return wrap


async def _timed_call(op: str, call: Awaitable[_V]) -> _V:
    start = time.perf_counter()
    try:
        return await call
    except (RedisError, OSError, TimeoutError):
        _redis_errors_child(op).inc()
        raise
    finally:
        _redis_seconds_child(op).observe(time.perf_counter() - start)


# -- scrape time -----------------------------------------------------------------------

def add_scrape_hook(app: web.Application, hook: ScrapeHook) -> None:
    """Run ``hook(app)`` before each scrape (bounded by a short timeout) to set gauges."""
    from .appkeys import SCRAPE_HOOKS

    app.setdefault(SCRAPE_HOOKS, []).append(hook)


def _entry_ms(entry_id: Any) -> int:
    raw = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    return int(raw.split("-", 1)[0])


async def read_queue(client: Any, now_ms: int) -> tuple[int, int, int, float]:
    """(length, waiting, pending, oldest waiting age in s) of the work queue, from Redis.

    Waiting entries are those after the consumer group's last delivered id (all of them
    while no worker has created the group yet).
    """
    key = queue_key()
    length = int(await client.xlen(key))
    group: dict[str, Any] | None = None
    if length:
        with contextlib.suppress(RedisError):  # no such key/group yet
            for info in await client.xinfo_groups(key):
                name = info.get("name")
                name = name.decode() if isinstance(name, bytes) else name
                if name == QUEUE_GROUP:
                    group = info
    if group is None:
        pending = 0
        first = await client.xrange(key, "-", "+", count=1) if length else []
    else:
        pending = int(group.get("pending") or 0)
        last = group.get("last-delivered-id") or b"0-0"
        last = last.decode() if isinstance(last, bytes) else str(last)
        first = await client.xrange(key, f"({last}", "+", count=1)
    if not first:
        return length, 0, pending, 0.0
    # The group's lag counts undelivered entries; Redis reports none after deletions, and
    # then the stream's length is the honest upper bound. An entry was found, so >= 1.
    lag = group.get("lag") if group is not None else length
    waiting = int(lag) if lag is not None else length
    age = max(0.0, (now_ms - _entry_ms(first[0][0])) / 1000)
    return length, max(waiting, 1), pending, age


async def _scrape_queue(app: web.Application) -> None:
    from .appkeys import STORE  # the app's keys import the hub; import late, once wired

    if STORE not in app:
        return
    try:
        client = await asyncio.wait_for(app[STORE].get(), SCRAPE_REDIS_TIMEOUT_S)
        length, waiting, pending, age = await asyncio.wait_for(
            _timed_call("queue_scrape", read_queue(client, int(time.time() * 1000))),
            SCRAPE_REDIS_TIMEOUT_S,
        )
    except (RedisError, OSError, TimeoutError) as exc:
        QUEUE_SCRAPE_ERRORS.inc()
        log.warning("work queue not read for metrics: %s", type(exc).__name__)
        return
    QUEUE_LENGTH.set(length)
    QUEUE_WAITING.set(waiting)
    QUEUE_PENDING.set(pending)
    QUEUE_OLDEST_AGE.set(age)


async def metrics_view(request: web.Request) -> web.Response:
    """``GET /metrics``: Prometheus text format."""
    from .appkeys import HUB, SCRAPE_HOOKS

    app = request.app
    if HUB in app:
        HUB_SUBSCRIPTIONS.set(app[HUB].feed_count)
    await _scrape_queue(app)
    for hook in app.get(SCRAPE_HOOKS, ()):
        try:
            await asyncio.wait_for(hook(app), SCRAPE_HOOK_TIMEOUT_S)
        except Exception as exc:  # a broken hook must not take the other metrics down
            log.warning("metrics scrape hook failed: %s", type(exc).__name__)
    body = generate_latest(REGISTRY)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
