"""Durable Streams on the service: tenancy, the anonymous tenant setting, exactly-once
producers, push-based live delivery through the pod hub, and run logs read as streams.
(The protocol itself is checked by the official suite: test_durable_conformance.py.)"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
import redis

from runlog import durable_announce as announce
from runlog.calls import LogLimits
from runlog.keys import durable_live_channel, durable_tag
from runner_bridge import AsyncBridge
from service.app import create_app
from service.auth import TokenTable
from service.settings import Settings, SettingsError

from .conftest import TOKEN_SPEC, TOKENS

ACME = {"X-Mantis-Token": TOKENS["acme"]}
OTHER = {"Authorization": f"Bearer {TOKENS['other']}"}
TEXT = {"Content-Type": "text/plain"}


@pytest.fixture
def durable(aiohttp_client: Callable[..., Any], redis_url: str) -> Callable[..., Any]:
    """The app in-process over the real redis-server, with settings overrides."""

    async def start(**overrides: Any) -> Any:
        settings = Settings(tenant_tokens=TOKEN_SPEC, redis_url=redis_url, **overrides)
        app = create_app(settings, TokenTable.parse(TOKEN_SPEC), redis_url)
        return await aiohttp_client(app, server_kwargs={"host": "127.0.0.1"})

    return start


async def test_same_path_under_two_tenants_is_two_streams(durable: Callable[..., Any]) -> None:
    client = await durable()
    for headers, body in ((ACME, "acme data"), (OTHER, "other data")):
        created = await client.put("/v1/stream/common/name", headers={**headers, **TEXT}, data=body)
        assert created.status == 201
    acme = await client.get("/v1/stream/common/name", headers=ACME)
    other = await client.get("/v1/stream/common/name", headers=OTHER)
    assert await acme.text() == "acme data"
    assert await other.text() == "other data"
    await client.delete("/v1/stream/common/name", headers=OTHER)
    assert (await client.get("/v1/stream/common/name", headers=OTHER)).status == 404
    assert (await client.get("/v1/stream/common/name", headers=ACME)).status == 200


async def test_token_required_unless_anonymous_tenant(durable: Callable[..., Any]) -> None:
    client = await durable()
    refused = await client.put("/v1/stream/x", headers=TEXT)
    assert refused.status == 401
    assert (await refused.json())["error"]["code"] == "unauthorized"
    wrong = await client.put("/v1/stream/x", headers={"X-Mantis-Token": "nope", **TEXT})
    assert wrong.status == 401

    anonymous = await durable(streams_anonymous_tenant="acme")
    made = await anonymous.put("/v1/stream/anon", headers=TEXT, data="hi")
    assert made.status == 201
    # Token-less requests act as that tenant: the token holder sees the same stream.
    assert await (await anonymous.get("/v1/stream/anon", headers=ACME)).text() == "hi"


def test_anonymous_tenant_only_on_loopback() -> None:
    env = {"MANTIS_STREAMS_ANONYMOUS_TENANT": "conformance"}
    assert Settings.from_env(env).streams_anonymous_tenant == "conformance"
    for host in ("127.0.0.1", "::1", "localhost"):
        settings = Settings.from_env({**env, "MANTIS_HOST": host})
        assert settings.streams_anonymous_tenant == "conformance"
    for host in ("0.0.0.0", "10.1.2.3", "example.com"):
        with pytest.raises(SettingsError, match=r"MANTIS_STREAMS_ANONYMOUS_TENANT.*loopback"):
            Settings.from_env({**env, "MANTIS_HOST": host})
    with pytest.raises(SettingsError, match="tenant name"):
        Settings.from_env({"MANTIS_STREAMS_ANONYMOUS_TENANT": "no spaces"})


def test_service_refuses_to_start_with_anonymous_tenant_on_a_public_host(
    spawn_service: Callable[..., Any], redis_url: str
) -> None:
    import subprocess
    import sys

    from .conftest import ROOT

    done = subprocess.run(
        [sys.executable, "-m", "service"],
        cwd=ROOT,
        env={
            "PATH": "/usr/bin:/bin",
            "MANTIS_HOST": "0.0.0.0",
            "MANTIS_REDIS_URL": redis_url,
            "MANTIS_STREAMS_ANONYMOUS_TENANT": "conformance",
        },
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "MANTIS_STREAMS_ANONYMOUS_TENANT" in done.stderr


async def test_concurrent_retries_of_one_producer_batch_write_once(
    durable: Callable[..., Any],
) -> None:
    client = await durable()
    await client.put("/v1/stream/orders", headers={**ACME, "Content-Type": "application/json"})
    producer = {"Producer-Id": "p1", "Producer-Epoch": "0", "Producer-Seq": "0"}
    headers = {**ACME, **producer, "Content-Type": "application/json"}
    replies = await asyncio.gather(
        *(
            client.post("/v1/stream/orders", headers=headers, data='[{"n":1},{"n":2}]')
            for _ in range(8)
        )
    )
    statuses = sorted(r.status for r in replies)
    assert statuses == [200] + [204] * 7
    assert all(r.headers["Producer-Seq"] == "0" for r in replies)
    read = await client.get("/v1/stream/orders", headers=ACME)
    assert await read.json() == [{"n": 1}, {"n": 2}]


async def test_bad_headers_are_named(durable: Callable[..., Any]) -> None:
    client = await durable()
    bad_ttl = await client.put("/v1/stream/t", headers={**ACME, **TEXT, "Stream-TTL": "1.5"})
    assert bad_ttl.status == 400
    assert "Stream-TTL" in (await bad_ttl.json())["error"]["message"]
    await client.put("/v1/stream/t", headers={**ACME, **TEXT})
    partial = await client.post(
        "/v1/stream/t", headers={**ACME, **TEXT, "Producer-Id": "p"}, data="x"
    )
    assert partial.status == 400
    assert "Producer-Epoch" in (await partial.json())["error"]["message"]
    read_only = await client.put("/v1/stream/runs/r1", headers={**ACME, **TEXT})
    assert read_only.status == 405
    json_type = {**ACME, "Content-Type": "application/json"}
    await client.put("/v1/stream/j", headers=json_type)
    not_json = await client.post("/v1/stream/j", headers=json_type, data="{oops")
    assert not_json.status == 400
    assert "JSON" in (await not_json.json())["error"]["message"]
    huge = await client.post("/v1/stream/j", headers=json_type, data="[" + "1," * 10_000 + "1]")
    assert huge.status == 413
    assert "10000 messages" in (await huge.json())["error"]["message"]


async def _read_until(resp: Any, marker: bytes) -> bytes:
    seen = b""
    for _ in range(100):
        if marker in seen:
            return seen
        seen += await asyncio.wait_for(resp.content.readany(), 10)
    raise AssertionError(f"{marker!r} never came: {seen!r}")


async def test_live_readers_share_one_subscription_and_cost_no_reads(
    durable: Callable[..., Any], redis_url: str
) -> None:
    client = await durable()
    await client.put("/v1/stream/feed", headers={**ACME, **TEXT}, data="old")
    readers = [
        await client.get("/v1/stream/feed?offset=-1&live=sse", headers=ACME) for _ in range(5)
    ]
    for resp in readers:
        await _read_until(resp, b'"upToDate":true')
    store = redis.Redis.from_url(redis_url)
    channel = durable_live_channel(durable_tag("acme", "feed"))
    assert store.pubsub_numsub(channel) == [(channel.encode(), 1)]
    before = store.info("commandstats")
    appended = await client.post("/v1/stream/feed", headers={**ACME, **TEXT}, data="new data")
    assert appended.status == 204
    for resp in readers:
        frames = await _read_until(resp, b"data:new data")
        assert b"event: control" in frames or b"event: control" in await _read_until(
            resp, b"event: control"
        )
    after = store.info("commandstats")
    store.close()

    def calls(stats: dict[str, Any], name: str) -> int:
        return int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))

    # The append's one script call; the five deliveries read nothing from the store.
    assert calls(after, "evalsha") - calls(before, "evalsha") == 1
    assert calls(after, "xrange") == calls(before, "xrange")
    for resp in readers:
        resp.close()


async def test_live_reads_end_when_the_pub_sub_connection_drops(
    durable: Callable[..., Any], redis_url: str
) -> None:
    """Announcements sent while the pod's pub/sub connection is down are lost to it: its
    SSE readers end (to resume by offset) rather than wait for data that will not come."""
    client = await durable()
    await client.put("/v1/stream/drop", headers={**ACME, **TEXT}, data="x")
    sse = await client.get("/v1/stream/drop?offset=-1&live=sse", headers=ACME)
    await _read_until(sse, b'"upToDate":true')
    store = redis.Redis.from_url(redis_url)
    assert store.client_kill_filter(_type="pubsub") >= 1
    store.close()
    rest = await asyncio.wait_for(sse.content.read(), 10)  # ends: EOF
    assert b"data:" not in rest
    # The pod resubscribes; a new live read works again.
    for _ in range(100):
        again = await client.get("/v1/stream/drop?offset=-1&live=long-poll", headers=ACME)
        if again.status == 200:
            break
        await asyncio.sleep(0.05)  # the hub reconnects on its own backoff: no event to await
    assert again.status == 200
    assert await again.text() == "x"


async def test_long_poll_answers_with_the_next_append(durable: Callable[..., Any]) -> None:
    client = await durable(streams_long_poll_s=0.5)
    made = await client.put("/v1/stream/lp", headers={**ACME, **TEXT})
    tail = made.headers["Stream-Next-Offset"]
    waiting = asyncio.ensure_future(
        client.get(f"/v1/stream/lp?offset={tail}&live=long-poll", headers=ACME)
    )
    # Whether the append lands before the poll's read or while it waits, the answer is it.
    await client.post("/v1/stream/lp", headers={**ACME, **TEXT}, data="woken")
    resp = await asyncio.wait_for(waiting, 10)
    assert resp.status == 200
    assert await resp.text() == "woken"
    assert resp.headers["Stream-Cursor"].isdigit()
    assert resp.headers["Stream-Next-Offset"] > tail
    quiet = await client.get(
        f"/v1/stream/lp?offset={resp.headers['Stream-Next-Offset']}&live=long-poll",
        headers=ACME,
    )
    # Nothing more within the (shortened) wait: 204 at the tail.
    assert quiet.status == 204
    assert quiet.headers["Stream-Up-To-Date"] == "true"


async def test_run_log_read_as_a_durable_stream(
    durable: Callable[..., Any], redis_url: str
) -> None:
    client = await durable()
    async with AsyncBridge.from_url(redis_url, limits=LogLimits()) as bridge:
        run = await bridge.open_run("run-ds", tenant="acme")
        await run.set_phase("running")
        await run.append({"step": 1})
        first = await client.get("/v1/stream/runs/run-ds?offset=-1", headers=ACME)
        assert first.status == 200
        messages = await first.json()
        assert [m["event"] for m in messages] == ["phase", "phase", "message"]
        assert messages[2]["data"]["step"] == 1
        assert first.headers["Stream-Next-Offset"] == messages[-1]["id"]
        assert "Stream-Closed" not in first.headers
        sse = await client.get(
            f"/v1/stream/runs/run-ds?offset={messages[-1]['id']}&live=sse", headers=ACME
        )
        await _read_until(sse, b'"upToDate":true')
        await run.append({"step": 2})
        await run.finish("complete")
        frames = await _read_until(sse, b'"streamClosed":true')
        data = [line[len(b"data:") :] for line in frames.split(b"\n") if line.startswith(b"data:[")]
        live = [m for chunk in data for m in json.loads(chunk)]
        assert [m["event"] for m in live][-1] == "terminal"
        assert live[0]["data"]["step"] == 2
    done = await client.get("/v1/stream/runs/run-ds?offset=-1", headers=ACME)
    assert done.headers["Stream-Closed"] == "true"
    assert (await client.get("/v1/stream/runs/run-ds", headers=OTHER)).status == 404
    head = await client.head("/v1/stream/runs/run-ds", headers=ACME)
    assert head.headers["Stream-Closed"] == "true"


async def test_announcement_built_in_lua_reads_back_in_python(
    durable: Callable[..., Any], redis_url: str
) -> None:
    """One codec: what the APPEND script publishes is what ``decode`` reads (and ``encode``
    writes), whatever the data holds."""
    client = await durable()
    await client.put("/v1/stream/codec", headers={**ACME, **TEXT}, data="ab")
    store = redis.Redis.from_url(redis_url)
    pubsub = store.pubsub()
    pubsub.subscribe(durable_live_channel(durable_tag("acme", "codec")))
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    hostile = "a b\n1 2 3 4 0\nevent: x\r\n\r\n"
    await client.post(
        "/v1/stream/codec", headers={**ACME, **TEXT, "Stream-Closed": "true"}, data=hostile
    )
    message = pubsub.get_message(timeout=5)
    pubsub.close()
    store.close()
    payload = message["data"]
    change = announce.decode(payload)
    size = 2 + len(hostile.encode())
    assert change == announce.Change(announce.APPENDED, 1, 2, size, True, hostile.encode())
    assert announce.encode(*change) == payload
    with pytest.raises(ValueError):
        announce.decode(b"x 1 2 3 0\n")


async def test_streams_on_both_stores(make_service: Callable[..., Any]) -> None:
    """The scripts and the live path also run on the embedded store (``make run``)."""
    svc = await make_service()
    client = svc.client
    json_type = {**ACME, "Content-Type": "application/json"}
    made = await client.put("/v1/stream/both", headers=json_type, data='[{"a":1}]')
    assert made.status == 201
    tail = made.headers["Stream-Next-Offset"]
    waiting = asyncio.ensure_future(
        client.get(f"/v1/stream/both?offset={tail}&live=long-poll", headers=ACME)
    )
    appended = await client.post(
        "/v1/stream/both",
        headers={**json_type, "Producer-Id": "p", "Producer-Epoch": "0", "Producer-Seq": "0"},
        data='[{"b":2},{"c":3}]',
    )
    assert appended.status == 200
    live = await asyncio.wait_for(waiting, 10)
    assert await live.json() == [{"b": 2}, {"c": 3}]
    everything = await client.get("/v1/stream/both?offset=-1", headers=ACME)
    assert await everything.json() == [{"a": 1}, {"b": 2}, {"c": 3}]
    closed = await client.post("/v1/stream/both", headers={**ACME, "Stream-Closed": "true"})
    assert closed.status == 204
    head = await client.head("/v1/stream/both", headers=ACME)
    assert head.headers["Stream-Closed"] == "true"
