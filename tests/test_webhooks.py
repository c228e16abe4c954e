"""Webhooks against a real redis-server, real service pods and a real HTTP receiver."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import signal
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest
import redis
from standardwebhooks import Webhook

from runlog.calls import LogLimits, cancel_call
from runner_bridge import Bridge
from service.app import create_app
from service.auth import TokenTable
from service.settings import Settings

from .conftest import TOKEN_SPEC, TOKENS
from .webhook_support import MapResolver, Receiver

LOCAL = {"webhook_allow_private": True, "webhook_allow_http": True}


def hdr(tenant: str = "acme") -> dict[str, str]:
    return {"X-Mantis-Token": TOKENS[tenant]}


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


@pytest.fixture
def pod(aiohttp_client: Callable[..., Any], redis_url: str) -> Callable[..., Any]:
    """Start one in-process pod over the real redis; several calls = several pods."""

    async def start(resolver: MapResolver | None = None, **overrides: Any) -> Any:
        settings = Settings(tenant_tokens=TOKEN_SPEC, redis_url=redis_url, **overrides)
        factory = (lambda: resolver) if resolver is not None else None
        app = create_app(settings, TokenTable.parse(TOKEN_SPEC), redis_url,
                         resolver_factory=factory)
        return await aiohttp_client(app, server_kwargs={"host": "127.0.0.1"})

    return start


async def register(client: Any, url: str, events: list[str], tenant: str = "acme") -> Any:
    resp = await client.post("/v1/webhooks", json={"url": url, "events": events},
                             headers=hdr(tenant))
    body = await resp.json()
    assert resp.status == 201, body
    return body


def finish_run(redis_url: str, run_id: str, tenant: str = "acme", phase: str = "complete") -> None:
    with Bridge.from_url(redis_url, limits=LogLimits()) as bridge:
        run = bridge.open_run(run_id, tenant=tenant)
        run.set_phase("running")
        run.append({"kind": "step", "type": "click"})
        run.finish(phase)


async def deliveries(client: Any, hook_id: str, tenant: str = "acme") -> list[dict[str, Any]]:
    resp = await client.get(f"/v1/webhooks/{hook_id}/deliveries", headers=hdr(tenant))
    assert resp.status == 200
    found: list[dict[str, Any]] = (await resp.json())["deliveries"]
    return found


async def settled(client: Any, hook_id: str, count: int, limit_s: float = 30) -> list[Any]:
    """Until ``count`` deliveries of the endpoint are no longer pending (polled via the API:
    no event tells the test when a delivery was written down as failed)."""

    async def loop() -> list[Any]:
        while True:
            found = await deliveries(client, hook_id)
            if len(found) >= count and all(d["status"] != "pending" for d in found):
                return found
            await asyncio.sleep(0.05)

    return await asyncio.wait_for(loop(), limit_s)


def verified(rec: Any, secret: str) -> dict[str, Any]:
    body: dict[str, Any] = Webhook(secret).verify(rec.body, rec.headers)
    return body


# Registration ------------------------------------------------------------------------


async def test_register_list_delete(pod: Any, receiver: Receiver) -> None:
    client = await pod(**LOCAL)
    made = await register(client, receiver.base + "/ok/a", ["run.finished", "run.phase"])
    assert made["id"].startswith("wh_")
    assert made["events"] == ["run.finished", "run.phase"]
    assert made["secret"].startswith("whsec_")
    assert len(base64.b64decode(made["secret"][len("whsec_"):])) >= 24
    assert made["created_at"].endswith("Z")

    resp = await client.get("/v1/webhooks", headers=hdr())
    listed = (await resp.json())["webhooks"]
    assert [w["id"] for w in listed] == [made["id"]]
    assert "secret" not in listed[0]
    assert made["secret"] not in await resp.text()

    # Another tenant sees none of it.
    resp = await client.get("/v1/webhooks", headers=hdr("other"))
    assert (await resp.json())["webhooks"] == []
    for method, path in [("GET", f"/v1/webhooks/{made['id']}/deliveries"),
                         ("DELETE", f"/v1/webhooks/{made['id']}")]:
        resp = await client.request(method, path, headers=hdr("other"))
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "webhook_not_found"

    resp = await client.delete(f"/v1/webhooks/{made['id']}", headers=hdr())
    assert resp.status == 204
    resp = await client.delete(f"/v1/webhooks/{made['id']}", headers=hdr())
    assert resp.status == 404
    resp = await client.get("/v1/webhooks/nonsense/deliveries", headers=hdr())
    assert resp.status == 404
    resp = await client.get("/v1/webhooks", headers={})
    assert resp.status == 401


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"events": ["run.finished"]}, "url"),
        ({"url": 5, "events": ["run.finished"]}, "url"),
        ({"url": "https://example.com/h"}, "events"),
        ({"url": "https://example.com/h", "events": []}, "events"),
        ({"url": "https://example.com/h", "events": ["run.started"]}, "events"),
        ({"url": "https://example.com/h", "events": "run.finished"}, "events"),
        ({"url": "https://example.com/h", "events": ["run.phase"], "secret": "x"}, "secret"),
        ({"url": "ftp://example.com/h", "events": ["run.phase"]}, "url"),
        ({"url": "https://u:p@example.com/h", "events": ["run.phase"]}, "url"),
    ],
)
async def test_validation_names_the_field(pod: Any, body: dict[str, Any], field: str) -> None:
    client = await pod(**LOCAL)
    resp = await client.post("/v1/webhooks", json=body, headers=hdr())
    err = (await resp.json())["error"]
    assert resp.status == 400
    assert err["code"] == "invalid_request"
    assert err["message"].startswith(field)


async def test_not_json(pod: Any) -> None:
    client = await pod(**LOCAL)
    for raw in (b"{", b"[1]"):
        resp = await client.post("/v1/webhooks", data=raw, headers=hdr())
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "invalid_json"


# SSRF ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://example.test/h",  # http without ALLOW_HTTP
        "https://127.0.0.1/h",
        "https://localhost/h",  # a name that resolves to loopback (system resolver)
        "https://[::1]/h",
        "https://10.1.2.3/h",
        "https://192.168.0.1/h",
        "https://169.254.169.254/latest/meta-data",
        "https://[fd00:ec2::254]/h",
        "https://224.0.0.1/h",
        "https://0.0.0.0/h",
        "https://[::ffff:127.0.0.1]/h",
        "https://100.64.0.1/h",
    ],
)
async def test_ssrf_refused_at_registration(pod: Any, url: str) -> None:
    client = await pod()
    resp = await client.post("/v1/webhooks", json={"url": url, "events": ["run.phase"]},
                             headers=hdr())
    err = (await resp.json())["error"]
    assert resp.status == 400, err
    assert err["code"] == "invalid_request"
    assert err["message"].startswith("url")


async def test_ssrf_mapped_names(pod: Any) -> None:
    names = MapResolver({"inside.test": "127.0.0.1", "meta.test": "169.254.169.254",
                         "public.test": "93.184.216.34"})
    client = await pod(resolver=names)
    for host in ("inside.test", "meta.test", "nowhere.test"):
        resp = await client.post("/v1/webhooks", headers=hdr(),
                                 json={"url": f"https://{host}/h", "events": ["run.phase"]})
        assert resp.status == 400, host
    await register(client, "https://public.test/h", ["run.phase"])


async def test_ssrf_checked_again_at_connect(pod: Any, receiver: Receiver, redis_url: str) -> None:
    """A name that resolved to a public address at registration and to loopback later
    (DNS rebinding) is refused when connecting: the receiver never hears of it."""
    names = MapResolver({"rebind.test": "93.184.216.34"})
    client = await pod(resolver=names, webhook_allow_http=True, webhook_retry_s=(0.1,))
    hook = await register(client, f"http://rebind.test:{receiver.port}/ok/r", ["run.finished"])
    names.table["rebind.test"] = "127.0.0.1"
    finish_run(redis_url, "rebind")
    (done,) = await settled(client, hook["id"], 1)
    assert done["status"] == "failed"
    assert len(done["attempts"]) == 2
    assert all(a["error"].startswith("blocked") for a in done["attempts"])
    assert receiver.got == []


# Delivery ------------------------------------------------------------------------------


async def test_signed_deliveries_of_phase_moves(
    pod: Any, receiver: Receiver, redis_url: str
) -> None:
    client = await pod(**LOCAL)
    both = await register(client, receiver.base + "/ok/both", ["run.phase", "run.finished"])
    fin = await register(client, receiver.base + "/ok/fin", ["run.finished"])
    with Bridge.from_url(redis_url, limits=LogLimits()) as bridge:
        run = bridge.open_run("r1", tenant="acme")
        run.set_phase("running")
        # A cancel request changes the run object but not its phase: no run.phase for it.
        bridge.client.evalsha  # noqa: B018 - the bridge's client runs the cancel script below
        source, keys, args = cancel_call("r1", LogLimits())
        bridge.client.eval(source, len(keys), *keys, *args)
        run.finish("cancelled")
    await receiver.wait_for(lambda: len(receiver.on("/ok/both")) == 4
                            and len(receiver.on("/ok/fin")) == 1)
    bodies = [verified(r, both["secret"]) for r in receiver.on("/ok/both")]
    phases = sorted((b["type"], b["data"]["phase"]) for b in bodies)
    assert phases == [("run.finished", "cancelled"), ("run.phase", "cancelled"),
                      ("run.phase", "queued"), ("run.phase", "running")]
    finished = verified(receiver.on("/ok/fin")[0], fin["secret"])
    assert finished["type"] == "run.finished"
    assert finished["data"]["run_id"] == "r1"
    assert finished["data"]["phase"] == "cancelled"
    assert finished["data"]["cancel_requested"] is True
    assert finished["timestamp"].endswith("Z")
    # The other endpoint's secret does not verify it.
    with pytest.raises(Exception, match="signature"):
        Webhook(both["secret"]).verify(receiver.on("/ok/fin")[0].body,
                                       receiver.on("/ok/fin")[0].headers)
    rec = receiver.on("/ok/fin")[0]
    assert rec.headers["webhook-signature"].startswith("v1,")
    assert rec.headers["Content-Type"] == "application/json"
    found = await settled(client, fin["id"], 1)
    assert found[0]["status"] == "delivered"
    assert found[0]["id"] == rec.headers["webhook-id"]
    assert found[0]["attempts"][0]["status_code"] == 200


async def test_endpoint_gets_only_events_after_registration(
    pod: Any, receiver: Receiver, redis_url: str
) -> None:
    client = await pod(**LOCAL)
    finish_run(redis_url, "before")
    hook = await register(client, receiver.base + "/ok/late", ["run.finished"])
    finish_run(redis_url, "after")
    await receiver.wait_for(lambda: len(receiver.got) >= 1)
    await settled(client, hook["id"], 1)
    assert [orjson.loads(r.body)["data"]["run_id"] for r in receiver.got] == ["after"]


async def _deliveries_counted(client: Any) -> dict[str, float]:
    """``mantis_webhook_deliveries_total`` by outcome, from the pod's /metrics."""
    text = await (await client.get("/metrics")).text()
    found = re.findall(r'^mantis_webhook_deliveries_total\{outcome="(\w+)"\} (\S+)$', text, re.M)
    return {outcome: float(value) for outcome, value in found}


async def test_retries_keep_the_webhook_id(pod: Any, receiver: Receiver, redis_url: str) -> None:
    client = await pod(webhook_retry_s=(0.1, 0.1, 0.1), **LOCAL)
    before = await _deliveries_counted(client)
    hook = await register(client, receiver.base + "/flaky/2", ["run.finished"])
    finish_run(redis_url, "flaky")
    (done,) = await settled(client, hook["id"], 1)
    # Counted once the record's reply is back, a moment after Redis shows it (the metrics
    # registry is the process's: compare before and after).
    for _ in range(100):  # bounded
        after = await _deliveries_counted(client)
        if after.get("delivered", 0) > before.get("delivered", 0):
            break
        await asyncio.sleep(0.02)  # the dispatcher's task counts after its reply: poll it
    assert after.get("retry", 0) - before.get("retry", 0) == 2
    # Nothing is left waiting: the pending gauge, read from the due sets at scrape time.
    assert "\nmantis_webhook_pending 0.0\n" in await (await client.get("/metrics")).text()
    assert after.get("delivered", 0) - before.get("delivered", 0) == 1
    assert done["status"] == "delivered"
    assert [a["status_code"] for a in done["attempts"]] == [500, 500, 200]
    assert {r.headers["webhook-id"] for r in receiver.got} == {done["id"]}
    assert [r.status for r in receiver.got] == [500, 500, 200]
    bodies = {r.body for r in receiver.got}
    assert len(bodies) == 1  # the same payload each time
    for r in receiver.got:
        verified(r, hook["secret"])


async def test_fails_after_the_last_retry(pod: Any, receiver: Receiver, redis_url: str) -> None:
    client = await pod(webhook_retry_s=(0.05, 0.05), **LOCAL)
    hook = await register(client, receiver.base + "/flaky/99", ["run.finished"])
    finish_run(redis_url, "doomed")
    (done,) = await settled(client, hook["id"], 1)
    assert done["status"] == "failed"
    assert done["next_attempt_at"] is None
    assert [a["status_code"] for a in done["attempts"]] == [500, 500, 500]
    assert len(receiver.got) == 3


async def test_hanging_receiver_times_out_and_is_retried(
    pod: Any, receiver: Receiver, redis_url: str
) -> None:
    client = await pod(webhook_retry_s=(0.1,), webhook_timeout_s=0.5, **LOCAL)
    hook = await register(client, receiver.base + "/hang/x", ["run.finished"])
    finish_run(redis_url, "slow")
    (done,) = await settled(client, hook["id"], 1)
    assert done["status"] == "delivered"
    assert done["attempts"][0]["error"].startswith("timeout")
    assert done["attempts"][0]["status_code"] is None
    assert done["attempts"][1]["status_code"] == 200
    assert len({r.headers["webhook-id"] for r in receiver.got}) == 1


async def test_redirect_not_followed(pod: Any, receiver: Receiver, redis_url: str) -> None:
    client = await pod(webhook_retry_s=(0.05,), **LOCAL)
    hook = await register(client, receiver.base + "/redirect/x", ["run.finished"])
    finish_run(redis_url, "moved")
    (done,) = await settled(client, hook["id"], 1)
    assert done["status"] == "failed"
    assert [a["status_code"] for a in done["attempts"]] == [302, 302]
    assert all(a["error"] == "redirect: not followed" for a in done["attempts"])
    assert receiver.on("/ok") == []


async def test_a_stalled_endpoint_does_not_starve_the_others(
    pod: Any, receiver: Receiver, redis_url: str
) -> None:
    """Per pod at most 2 requests to one endpoint and 4 in all: an endpoint that never
    answers holds its 2, and the other endpoint gets all of its deliveries meanwhile."""
    client = await pod(webhook_concurrency=4, webhook_endpoint_concurrency=2, **LOCAL)
    await register(client, receiver.base + "/stall/a", ["run.finished"])
    await register(client, receiver.base + "/ok/b", ["run.finished"])
    with Bridge.from_url(redis_url, limits=LogLimits()) as bridge:
        for i in range(10):
            run = bridge.open_run(f"s{i}", tenant="acme")
            run.set_phase("running")
            run.finish("complete")
    await receiver.wait_for(lambda: len(receiver.on("/ok/b")) == 10)
    # The stalled endpoint's attempts take 10 s to time out: it still holds its 2 slots.
    assert len(receiver.on("/stall/a")) == 2


async def test_tenant_isolation(pod: Any, receiver: Receiver, redis_url: str) -> None:
    client = await pod(**LOCAL)
    mine = await register(client, receiver.base + "/ok/acme", ["run.finished"])
    theirs = await register(client, receiver.base + "/ok/other", ["run.finished"], "other")
    finish_run(redis_url, "a1", tenant="acme")
    finish_run(redis_url, "o1", tenant="other")
    await receiver.wait_for(lambda: len(receiver.got) == 2)
    assert verified(receiver.on("/ok/acme")[0], mine["secret"])["data"]["run_id"] == "a1"
    assert verified(receiver.on("/ok/other")[0], theirs["secret"])["data"]["run_id"] == "o1"


async def test_deleted_endpoint_gets_nothing_more(
    pod: Any, receiver: Receiver, redis_url: str
) -> None:
    client = await pod(webhook_retry_s=(0.3,), **LOCAL)
    hook = await register(client, receiver.base + "/flaky/1", ["run.finished"])
    finish_run(redis_url, "gone")
    await receiver.wait_for(lambda: len(receiver.got) == 1)
    resp = await client.delete(f"/v1/webhooks/{hook['id']}", headers=hdr())
    assert resp.status == 204
    # Its pending retry is dropped with it, at once.
    r = redis.Redis.from_url(redis_url)
    try:
        assert r.keys("mantis:{tenant:acme}:wh:due:*") == []
        assert r.keys("mantis:{tenant:acme}:wh:d:*") == []
    finally:
        r.close()
    assert len(receiver.got) == 1


async def test_two_pods_deliver_each_event_exactly_once(
    pod: Any, receiver: Receiver, redis_url: str
) -> None:
    """50 runs, 2 endpoints, 2 pods, a receiver refusing every 4th request: each endpoint
    gets exactly one successful delivery per run, and no delivery succeeds twice."""
    pods = [await pod(webhook_retry_s=(0.05, 0.05, 0.05), **LOCAL) for _ in range(2)]
    hooks = [await register(pods[0], receiver.base + f"/every/4/{n}", ["run.finished"])
             for n in range(2)]
    with Bridge.from_url(redis_url, limits=LogLimits()) as bridge:
        for i in range(50):
            run = bridge.open_run(f"run-{i}", tenant="acme")
            run.set_phase("running")
            run.finish("complete")

    def ok(n: int) -> list[Any]:
        return [r for r in receiver.on(f"/every/4/{n}/") + receiver.on(f"/every/4/{n}")
                if r.status == 200]

    try:
        await receiver.wait_for(lambda: all(len(ok(n)) >= 50 for n in range(2)))
    except TimeoutError:
        found = [await deliveries(pods[0], h["id"]) for h in hooks]
        pytest.fail(f"ok: {[len(ok(n)) for n in range(2)]}, got {len(receiver.got)}; "
                    f"statuses {[Counter(d['status'] for d in f) for f in found]}")
    for n, hook in enumerate(hooks):
        good = ok(n)
        ids = Counter(r.headers["webhook-id"] for r in good)
        assert len(ids) == 50 and max(ids.values()) == 1
        runs = Counter(verified(r, hook["secret"])["data"]["run_id"] for r in good)
        assert runs == Counter({f"run-{i}": 1 for i in range(50)})
    # Either pod answers for every delivery: all delivered.
    for hook in hooks:
        found = await settled(pods[1], hook["id"], 50)
        assert {d["status"] for d in found} == {"delivered"}


# Pods killed -------------------------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    return {"MANTIS_WEBHOOK_ALLOW_PRIVATE": "1", "MANTIS_WEBHOOK_ALLOW_HTTP": "1", **extra}


async def _http(method: str, url: str, **kw: Any) -> Any:
    async with aiohttp.ClientSession() as s, s.request(method, url, **kw) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_pod_killed_during_backoff(
    spawn_service: Any, receiver: Receiver, redis_url: str
) -> None:
    """The first attempt fails on pod A, A is SIGKILLed while the retry waits, pod B makes
    the retry: the receiver gets the event exactly once."""
    a = spawn_service(redis_url, **_env(MANTIS_WEBHOOK_RETRY_S="1.5"))
    status, hook = await _http("POST", a.base + "/v1/webhooks", headers=hdr(),
                               json={"url": receiver.base + "/flaky/1", "events": ["run.finished"]})
    assert status == 201
    finish_run(redis_url, "killed")
    await receiver.wait_for(lambda: len(receiver.got) == 1)

    async def first_answer_recorded() -> None:
        url = f"{a.base}/v1/webhooks/{hook['id']}/deliveries"
        while True:
            _, found = await _http("GET", url, headers=hdr())
            if found["deliveries"] and found["deliveries"][0]["attempts"]:
                return
            await asyncio.sleep(0.02)

    await asyncio.wait_for(first_answer_recorded(), 10)
    os.kill(a.proc.pid, signal.SIGKILL)
    a.proc.wait()
    b = spawn_service(redis_url, **_env(MANTIS_WEBHOOK_RETRY_S="1.5"))
    await receiver.wait_for(lambda: any(r.status == 200 for r in receiver.got))
    _, found = await _http("GET", f"{b.base}/v1/webhooks/{hook['id']}/deliveries", headers=hdr())
    (done,) = found["deliveries"]
    assert done["status"] == "delivered"
    assert [a["status_code"] for a in done["attempts"]] == [500, 200]
    assert [r.status for r in receiver.got] == [500, 200]
    assert len({r.headers["webhook-id"] for r in receiver.got}) == 1


async def test_pod_killed_mid_attempt(
    spawn_service: Any, receiver: Receiver, redis_url: str
) -> None:
    """Pod A dies while its attempt hangs: once A's lease ends, pod B makes the attempt
    again and writes the lost one down."""
    env = _env(MANTIS_WEBHOOK_RETRY_S="0.1", MANTIS_WEBHOOK_TIMEOUT_S="0.5")
    a = spawn_service(redis_url, **env)
    status, hook = await _http("POST", a.base + "/v1/webhooks", headers=hdr(),
                               json={"url": receiver.base + "/hang/1", "events": ["run.finished"]})
    assert status == 201
    b = None
    finish_run(redis_url, "lost")
    await receiver.wait_for(lambda: len(receiver.got) == 1)
    os.kill(a.proc.pid, signal.SIGKILL)
    a.proc.wait()
    b = spawn_service(redis_url, **env)
    await receiver.wait_for(lambda: any(r.status == 200 and r.path.startswith("/hang")
                                        for r in receiver.got[1:]))
    _, found = await _http("GET", f"{b.base}/v1/webhooks/{hook['id']}/deliveries", headers=hdr())
    (done,) = found["deliveries"]
    assert done["status"] == "delivered"
    assert done["attempts"][0]["error"].startswith("no answer recorded")
    assert done["attempts"][1]["status_code"] == 200
    assert len(receiver.got) == 2


async def test_deliveries_waiting_for_a_retry_are_counted_as_pending(
    pod: Any, receiver: Receiver, redis_url: str
) -> None:
    client = await pod(webhook_retry_s=(60.0,), **LOCAL)
    hook = await register(client, receiver.base + "/flaky/99", ["run.finished"])
    finish_run(redis_url, "waits")

    async def first_attempt_recorded() -> None:
        while True:
            found = await deliveries(client, hook["id"])
            if found and found[0]["attempts"]:
                return
            await asyncio.sleep(0.05)  # polled via the API: no event says it was recorded

    await asyncio.wait_for(first_attempt_recorded(), 30)
    text = await (await client.get("/metrics")).text()
    assert "\nmantis_webhook_pending 1.0\n" in text
