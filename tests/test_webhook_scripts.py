"""The delivery scripts on a real redis-server: exactly-once ingest, leases, fenced answers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis

from runlog import keys
from runlog.calls import LogLimits
from runner_bridge import Bridge
from service.store_client import StoreClient
from service.webhooks.model import Endpoint, new_endpoint_id, new_secret
from service.webhooks.store import WebhookStore


@pytest.fixture
async def hooks(redis_url: str) -> AsyncIterator[WebhookStore]:
    store = StoreClient(redis_url, 4)
    yield WebhookStore(store)
    await store.aclose()


def endpoint(events: tuple[str, ...] = ("run.finished",)) -> Endpoint:
    return Endpoint(id=new_endpoint_id(), url="https://example.com/h", events=events,
                    secret=new_secret(), created_at="t")


def finish(redis_url: str, run_id: str) -> None:
    with Bridge.from_url(redis_url, limits=LogLimits()) as bridge:
        run = bridge.open_run(run_id, tenant="acme")
        run.set_phase("running")
        run.finish("complete")


async def claim(hooks: WebhookStore, lease_ms: int = 60_000, take: int = 10) -> list:
    call = hooks.claim_call("acme", take=take, lease_ms=lease_ms, per_endpoint=8,
                            max_attempts=3, retention_s=60, busy={})
    (reply,) = await hooks.run_calls([call])
    return WebhookStore.claims_from("acme", reply)


async def test_ingest_is_exactly_once_whoever_runs_it(hooks: WebhookStore, redis_url: str) -> None:
    ep = endpoint()
    await hooks.register("acme", ep)
    for i in range(5):
        finish(redis_url, f"r{i}")
    # Many concurrent ingests (as from many pods): each feed event becomes one delivery.
    calls = [hooks.ingest_call("acme", 60) for _ in range(6)]
    await hooks.run_calls(calls)
    await hooks.run_calls(calls)
    r = redis.Redis.from_url(redis_url)
    try:
        assert r.zcard(keys.webhook_due_key("acme", ep.id)) == 5
    finally:
        r.close()


async def test_lease_and_fence(hooks: WebhookStore, redis_url: str) -> None:
    ep = endpoint()
    await hooks.register("acme", ep)
    finish(redis_url, "r1")
    await hooks.run_calls([hooks.ingest_call("acme", 60)])
    (first,) = await claim(hooks, lease_ms=0)  # a lease that has already ended
    assert first.claim == 1
    # Another pod claims it again: the first claim's pod is presumed lost.
    (second,) = await claim(hooks)
    assert second.delivery_id == first.delivery_id and second.claim == 2
    assert await claim(hooks) == []  # leased: nobody else gets it
    # The late answer of the first claim changes nothing; the second one's is written.
    late = hooks.record_call(first, "delivered", b'{"at_ms":1}', 0, 60)
    now = hooks.record_call(second, "delivered", b'{"at_ms":2}', 0, 60)
    assert await hooks.run_calls([late]) == [0]
    assert await hooks.run_calls([now]) == [1]
    assert await hooks.run_calls([now]) == [0]  # and only once
    (view,) = await hooks.deliveries("acme", ep.id, 10)
    assert view["status"] == "delivered"
    assert view["attempts"][0]["error"].startswith("no answer recorded")
    assert len(view["attempts"]) == 2


async def test_attempts_are_bounded(hooks: WebhookStore, redis_url: str) -> None:
    ep = endpoint()
    await hooks.register("acme", ep)
    finish(redis_url, "r1")
    await hooks.run_calls([hooks.ingest_call("acme", 60)])
    for _ in range(3):  # max_attempts = 3, every lease lost
        assert len(await claim(hooks, lease_ms=0)) == 1
    assert await claim(hooks, lease_ms=0) == []
    (view,) = await hooks.deliveries("acme", ep.id, 10)
    assert view["status"] == "failed"
    assert len(view["attempts"]) == 3


async def test_an_entry_that_is_no_run_object_does_not_stall_the_feed(
    hooks: WebhookStore, redis_url: str
) -> None:
    ep = endpoint()
    await hooks.register("acme", ep)
    finish(redis_url, "r1")
    r = redis.Redis.from_url(redis_url)
    try:
        # A foreign entry in the feed, then a good run after it.
        n = r.hincrby(keys.feed_keys("acme")[0], "n", 1)
        r.xadd(keys.feed_keys("acme")[1], {"e": "run", "d": "not json", "t": "0"}, id=f"{n}-0")
        finish(redis_url, "r2")
        await hooks.run_calls([hooks.ingest_call("acme", 60)])
        assert r.zcard(keys.webhook_due_key("acme", ep.id)) == 2
    finally:
        r.close()
