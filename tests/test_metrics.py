"""GET /metrics: the Prometheus text a real service gives while real streams run.

Counters are process-wide (one registry per process, as Prometheus expects), so each test
reads them before and after and checks the difference.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis
from prometheus_client.parser import text_string_to_metric_families

from runlog.calls import LogLimits, submit_call
from runlog.keys import QUEUE_GROUP, queue_key
from runner_bridge import AsyncBridge, Bridge
from service import metrics
from service.app import create_app
from service.auth import TokenTable
from service.hub import Subscriber
from service.settings import Settings

from .conftest import TOKEN_SPEC, TOKENS
from .contract_support import SSE, StrictSSE, events_of

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(client: Any) -> Samples:
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    found: Samples = {}
    for family in text_string_to_metric_families(await resp.text()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


async def test_every_documented_family_is_exposed(make_service) -> None:
    svc = await make_service()
    resp = await svc.client.get("/metrics")
    text = await resp.text()
    names = {family.name for family in text_string_to_metric_families(text)}
    for family in (
        "mantis_streams_open", "mantis_stream_duration_seconds", "mantis_stream_resumes",
        "mantis_events_delivered", "mantis_events_replayed", "mantis_gap_events",
        "mantis_slow_client_cuts", "mantis_stream_rejections", "mantis_hub_subscriptions",
        "mantis_pubsub_reconnects", "mantis_redis_command_seconds", "mantis_redis_errors",
        "mantis_http_requests", "mantis_http_request_duration_seconds", "mantis_submits",
        "mantis_polls", "mantis_queue_length", "mantis_queue_waiting", "mantis_queue_pending",
        "mantis_queue_oldest_waiting_age_seconds", "mantis_queue_scrape_errors",
        "mantis_webhook_deliveries", "mantis_webhook_pending", "process_cpu_seconds",
    ):
        assert family in names, family
    # No run id ever becomes a label value.
    assert "r-metrics" not in text


async def test_a_stream_is_counted_open_live_replayed_and_ended(
    make_service, bridge: Bridge, abridge: AsyncBridge
) -> None:
    svc = await make_service(pod_name="pod-a", metrics_tenant_classes=(("acme", "gold"),))
    run = bridge.open_run("r-metrics", tenant="acme")
    run.set_phase("running")
    for i in range(3):
        run.append({"kind": "step", "step_index": i})
    before = await scrape(svc.client)
    open_labels = {"pod": "pod-a", "kind": "run", "tenant_class": "gold"}

    resp = await svc.client.get(SSE.format(run_id="r-metrics"), headers=svc.headers())
    parser, seen = StrictSSE(), []
    async with asyncio.timeout(10):
        chunks = resp.content.iter_any()
        while len(seen) < 5:  # queued, running, three steps: the replay
            seen += events_of(parser.feed(await anext(chunks)))
        during = await scrape(svc.client)
        assert value(during, "mantis_streams_open", **open_labels) == 1
        assert value(during, "mantis_hub_subscriptions") >= 1
        await abridge.run("r-metrics").append({"kind": "step", "step_index": 3})
        await abridge.run("r-metrics").finish("complete")
        while not seen or seen[-1].event != "terminal":
            seen += events_of(parser.feed(await anext(chunks)))
    resp.close()
    after = await scrape(svc.client)
    for _ in range(100):  # the handler's finally runs just after the last bytes go out
        if value(after, "mantis_streams_open", **open_labels) == 0:
            break
        await asyncio.sleep(0.02)
        after = await scrape(svc.client)
    assert value(after, "mantis_streams_open", **open_labels) == 0
    delta = {
        name: total(after, name) - total(before, name)
        for name in ("mantis_events_replayed_total", "mantis_events_delivered_total")
    }
    assert delta["mantis_events_replayed_total"] == 5
    assert delta["mantis_events_delivered_total"] == 3  # step, phase complete, terminal
    ended = value(after, "mantis_stream_duration_seconds_count", kind="run", reason="terminal")
    assert ended - value(before, "mantis_stream_duration_seconds_count", kind="run",
                         reason="terminal") == 1
    assert value(after, "mantis_redis_command_seconds_count", op="state") > value(
        before, "mantis_redis_command_seconds_count", op="state"
    )
    route = {"method": "GET", "route": "/v1/runs/{run_id}/events", "status": "200"}
    assert value(after, "mantis_http_requests_total", **route) > value(
        before, "mantis_http_requests_total", **route
    )


async def test_resumes_and_gaps_are_counted(make_service, bridge: Bridge) -> None:
    svc = await make_service()
    run = bridge.open_run("r-gap", tenant="acme")
    run.set_phase("running")
    run.append({"kind": "step"})
    run.finish("complete")
    before = await scrape(svc.client)
    # A cursor of a log incarnation that never existed here: gap, then everything.
    headers = svc.headers(**{"Last-Event-ID": "zzzzzzzzzzz-0000000001"})
    resp = await svc.client.get(SSE.format(run_id="r-gap"), headers=headers)
    assert resp.status == 200
    body = await resp.read()
    assert b"event: gap" in body
    after = await scrape(svc.client)
    assert total(after, "mantis_gap_events_total") - total(before, "mantis_gap_events_total") == 1
    assert value(after, "mantis_stream_resumes_total", kind="run") - value(
        before, "mantis_stream_resumes_total", kind="run"
    ) == 1


async def test_queue_gauges_are_read_from_redis_at_scrape_time(make_service, store_url) -> None:
    svc = await make_service()
    client = redis.Redis.from_url(store_url)
    try:
        for run_id in ("q1", "q2"):
            script, keys, args = submit_call(run_id, "acme", b"{}", LogLimits())
            client.eval(script, len(keys), *keys, *args)
        first = await scrape(svc.client)
        assert value(first, "mantis_queue_length") == 2
        assert value(first, "mantis_queue_waiting") == 2
        assert value(first, "mantis_queue_pending") == 0
        oldest = value(first, "mantis_queue_oldest_waiting_age_seconds")
        assert 0 <= oldest < 60
        # A worker claims one: it is pending, one still waits.
        client.xgroup_create(queue_key(), QUEUE_GROUP, id="0", mkstream=True)
        client.xreadgroup(QUEUE_GROUP, "w1", {queue_key(): ">"}, count=1)
        second = await scrape(svc.client)
        assert value(second, "mantis_queue_pending") == 1
        assert value(second, "mantis_queue_waiting") == 1
        client.xreadgroup(QUEUE_GROUP, "w1", {queue_key(): ">"}, count=1)
        third = await scrape(svc.client)
        assert value(third, "mantis_queue_waiting") == 0
        assert value(third, "mantis_queue_oldest_waiting_age_seconds") == 0
    finally:
        client.close()


async def test_an_unreachable_store_costs_the_scrape_no_more_than_its_timeout(
    aiohttp_client,
) -> None:
    from .redis_server import free_port

    url = f"redis://127.0.0.1:{free_port()}"  # nothing listens there
    app = create_app(Settings(tenant_tokens=TOKEN_SPEC), TokenTable.parse(TOKEN_SPEC), url)
    client = await aiohttp_client(app, server_kwargs={"host": "127.0.0.1"})
    before = total(await scrape(client), "mantis_queue_scrape_errors_total")
    start = time.monotonic()
    after = await scrape(client)
    assert time.monotonic() - start < 10  # bounded, not a hung scrape (generous: loaded CI)
    assert total(after, "mantis_queue_scrape_errors_total") >= before + 1


async def test_pubsub_reconnects_are_counted(aiohttp_client, redis_url) -> None:
    app = create_app(
        Settings(tenant_tokens=TOKEN_SPEC), TokenTable.parse(TOKEN_SPEC), redis_url
    )
    client = await aiohttp_client(app, server_kwargs={"host": "127.0.0.1"})
    with Bridge.from_url(redis_url, limits=LogLimits()) as bridge:
        bridge.open_run("r-pubsub", tenant="acme")
    # A live stream makes sure the pub/sub connection is up before it is killed.
    resp = await client.get(
        SSE.format(run_id="r-pubsub"), headers={"X-Mantis-Token": TOKENS["acme"]}
    )
    assert resp.status == 200
    before = total(await scrape(client), "mantis_pubsub_reconnects_total")
    admin = redis.Redis.from_url(redis_url)
    try:
        admin.client_kill_filter(_type="pubsub")
    finally:
        admin.close()
    # The stream stays open while the hub reconnects; the counter moves once it has.
    after = before
    for _ in range(200):  # bounded: a reconnect takes well under 10 s
        after = total(await scrape(client), "mantis_pubsub_reconnects_total")
        if after != before:
            break
        await asyncio.sleep(0.05)  # the reconnect happens in the hub's task: poll its counter
    assert after == before + 1
    assert not resp.content.at_eof()  # the stream was not ended by the lost connection
    resp.close()


class _FullTransport(asyncio.Transport):
    """A transport whose peer reads nothing: every write stays buffered."""

    def __init__(self) -> None:
        super().__init__()
        self.buffered = 0
        self.aborted = False

    def write(self, data: Any) -> None:
        self.buffered += len(data)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.aborted

    def abort(self) -> None:
        self.aborted = True


async def test_a_slow_client_cut_is_counted() -> None:
    before = metrics.SLOW_CLIENT_CUTS._value.get()
    sub = Subscriber(_FullTransport(), last_n=0, min_t=None, deadline=0.0, backlog_limit=10)
    assert sub.send(b"x" * 5)
    assert not sub.send(b"x" * 50)
    assert metrics.SLOW_CLIENT_CUTS._value.get() == before + 1
