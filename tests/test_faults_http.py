"""What a client meets at the HTTP level when things are not normal: a store away, a pod
draining, a tenant over its stream cap, hostile bytes in headers, an HTTP/1.0 client,
and a pod about to be exposed without its secrets."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from runlog.calls import LogLimits
from runlog.keys import live_channel
from runner_bridge import AsyncBridge, Bridge
from service.app import create_app
from service.appkeys import ADMISSION, HUB
from service.auth import TokenTable
from service.settings import Settings

from .conftest import ROOT, TOKEN_SPEC, TOKENS, Service
from .contract_support import PAGE, SSE, StrictSSE, events_of
from .redis_server import free_port

UNAVAILABLE_RE = re.compile(rb"retry: (\d+)\n\n: unavailable\n\n")


@pytest.fixture
def service(aiohttp_client, redis_url: str) -> Callable[..., Awaitable[Service]]:
    """The app in-process; ``store`` overrides the real redis-server's URL."""

    async def start(store: str | None = None, **overrides: Any) -> Service:
        url = store or redis_url
        settings = Settings(tenant_tokens=TOKEN_SPEC, redis_url=url, **overrides)
        app = create_app(settings, TokenTable.parse(TOKEN_SPEC), url)
        client = await aiohttp_client(app, server_kwargs={"host": "127.0.0.1"})
        return Service(base=str(client.make_url("")).rstrip("/"), client=client, settings=settings)

    return start


def acme(**extra: str) -> dict[str, str]:
    return {"X-Mantis-Token": TOKENS["acme"], **extra}


async def raw_request(svc: Service, request: bytes, *, within: float = 10) -> bytes:
    """Send bytes as they are and read the reply until the server closes."""
    url = svc.client.make_url("")
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(within):
            return await reader.read()
    finally:
        writer.close()


def head_and_body(reply: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def assert_retry_later(status: int, content_type: str, body: bytes) -> None:
    assert status == 200
    assert content_type.startswith("text/event-stream")
    match = UNAVAILABLE_RE.fullmatch(body)
    assert match is not None, body
    assert 1000 <= int(match.group(1)) <= 3000, "retry is jittered around 2 s"


# -- a store away, a pod draining ----------------------------------------------------


async def test_a_stream_that_cannot_be_served_tells_the_browser_to_retry(service) -> None:
    svc = await service(store=f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    resp = await svc.client.get(SSE.format(run_id="r1"), headers=acme())
    assert_retry_later(resp.status, resp.headers["Content-Type"], await resp.read())
    page = await svc.client.get(PAGE.format(run_id="r1"), headers=acme())
    assert page.status == 503 and int(page.headers["Retry-After"]) > 0
    assert (await page.json())["error"]["code"] == "unavailable"
    # Authentication still comes first.
    assert (await svc.client.get(SSE.format(run_id="r1"))).status == 401
    # Liveness never asks the store; readiness does.
    assert (await svc.client.get("/healthz")).status == 200
    ready = await svc.client.get("/readyz")
    assert ready.status == 503 and (await ready.json())["reason"] == "store_unreachable"


async def test_the_retry_delay_is_jittered(service) -> None:
    svc = await service(store=f"redis://127.0.0.1:{free_port()}/0")
    delays = set()
    for _ in range(8):
        resp = await svc.client.get(SSE.format(run_id="r1"), headers=acme())
        match = UNAVAILABLE_RE.fullmatch(await resp.read())
        assert match is not None
        delays.add(int(match.group(1)))
    assert len(delays) > 1


async def test_a_draining_pod_turns_streams_away_but_serves_pages(
    service, redis_url: str
) -> None:
    svc = await service()
    with Bridge.from_url(redis_url, limits=LogLimits()) as bridge:
        run = bridge.open_run("r1", tenant="acme")
        run.set_phase("running")
    assert (await svc.client.get("/readyz")).status == 200
    svc.client.server.app[ADMISSION].start_draining()
    ready = await svc.client.get("/readyz")
    assert ready.status == 503 and (await ready.json())["reason"] == "draining"
    health = await svc.client.get("/healthz")
    assert health.status == 200 and (await health.json())["draining"] is True
    resp = await svc.client.get(SSE.format(run_id="r1"), headers=acme())
    assert_retry_later(resp.status, resp.headers["Content-Type"], await resp.read())
    assert (await svc.client.get(PAGE.format(run_id="r1"), headers=acme())).status == 200


# -- the tenant cap --------------------------------------------------------------------


async def test_a_tenant_over_its_stream_cap_gets_429(service, redis_url: str) -> None:
    svc = await service(tenant_max_streams=2, heartbeat_s=0.2)
    admission = svc.client.server.app[ADMISSION]
    with Bridge.from_url(redis_url, limits=LogLimits()) as bridge:
        for run_id, tenant in (("a1", "acme"), ("o1", "other")):
            run = bridge.open_run(run_id, tenant=tenant)
            run.set_phase("running")
    first = await svc.client.get(SSE.format(run_id="a1"), headers=acme())
    second = await svc.client.get(SSE.format(run_id="a1"), headers=acme())
    assert (first.status, second.status) == (200, 200)
    third = await svc.client.get(SSE.format(run_id="a1"), headers=acme())
    assert third.status == 429
    assert int(third.headers["Retry-After"]) > 0
    assert (await third.json())["error"]["code"] == "too_many_streams"
    # Another tenant is not affected; JSON pages are not streams.
    theirs = await svc.client.get(
        SSE.format(run_id="o1"), headers={"X-Mantis-Token": TOKENS["other"]}
    )
    assert theirs.status == 200
    assert (await svc.client.get(PAGE.format(run_id="a1"), headers=acme())).status == 200
    first.close()
    for _ in range(300):  # bounded: the next ping finds the closed connection
        if admission.open_streams("acme") < 2:
            break
        await asyncio.sleep(0.02)
    again = await svc.client.get(SSE.format(run_id="a1"), headers=acme())
    assert again.status == 200
    for resp in (second, theirs, again):
        resp.close()


# -- hostile or old clients -------------------------------------------------------------


async def test_no_response_names_the_server_software(service, redis_url: str) -> None:
    svc = await service()
    with Bridge.from_url(redis_url, limits=LogLimits()) as bridge:
        run = bridge.open_run("done", tenant="acme")
        run.set_phase("running")
        run.finish("complete")
    responses = [
        await svc.client.get("/healthz"),
        await svc.client.get("/readyz"),
        await svc.client.get("/nowhere"),
        await svc.client.get(PAGE.format(run_id="done")),  # 401
        await svc.client.get(PAGE.format(run_id="done"), headers=acme()),
        await svc.client.get(SSE.format(run_id="done"), headers=acme()),
    ]
    for resp in responses:
        await resp.read()
        assert "Server" not in resp.headers, (resp.status, resp.headers["Server"])
    # Requests that never reach the app: an unparseable one, a bad method.
    for raw in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n"):
        reply = await raw_request(svc, raw)
        status, headers, _ = head_and_body(reply)
        assert status == 400
        assert "server" not in headers, reply[:300]


@pytest.mark.parametrize(
    "header", [b"X-Mantis-Token: \xff\xfe", b"Last-Event-ID: \xc3\x28", b"Accept: \xff"]
)
async def test_a_header_that_is_not_utf8_is_a_client_error(
    service, redis_url: str, header: bytes
) -> None:
    svc = await service()
    with Bridge.from_url(redis_url, limits=LogLimits()) as bridge:
        run = bridge.open_run("r1", tenant="acme")
        run.set_phase("running")
        run.finish("complete")
    token = b"X-Mantis-Token: token-acme-secret\r\n"
    if header.startswith(b"X-Mantis-Token"):
        token = b""
    request = (
        b"GET /v1/runs/r1/events HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
        + token
        + header
        + b"\r\n\r\n"
    )
    status, _headers, body = head_and_body(await raw_request(svc, request))
    assert status in (400, 401, 200), body
    if status == 200:
        # The one header a client may get wrong harmlessly: Accept (then a JSON page).
        assert header.startswith(b"Accept")
    else:
        assert b'"error"' in body


async def test_an_http_1_0_client_gets_an_unchunked_stream(service, redis_url: str) -> None:
    svc = await service(heartbeat_s=0.3)
    hub = svc.client.server.app[HUB]
    async with AsyncBridge.from_url(redis_url, limits=LogLimits()) as bridge:
        run = await bridge.open_run("old", tenant="acme")
        await run.set_phase("running")
        url = svc.client.make_url("")
        reader, writer = await asyncio.open_connection(url.host, url.port)
        writer.write(
            b"GET /v1/runs/old/events?sse=true HTTP/1.0\r\n"
            b"X-Mantis-Token: token-acme-secret\r\n\r\n"
        )
        await writer.drain()
        channel = live_channel("old").encode()
        for _ in range(500):  # bounded: until this stream is live
            feed = hub._feeds.get(channel)
            if feed is not None and feed.subscribers:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the stream never went live")
        for i in range(3):
            await run.append({"kind": "step", "step_index": i})
        await asyncio.sleep(0.4)  # let a heartbeat ping go out on the live path too
        await run.finish("complete")
        async with asyncio.timeout(10):
            reply = await reader.read()
        writer.close()
    status, headers, body = head_and_body(reply)
    assert status == 200
    assert "transfer-encoding" not in headers
    assert headers["content-type"].startswith("text/event-stream")
    parser = StrictSSE()
    items = parser.feed(body)
    assert parser.at_boundary
    names = [e.event for e in events_of(items)]
    assert names == ["phase", "phase", "step", "step", "step", "phase", "terminal"]


# -- fail closed ------------------------------------------------------------------------


def start_exposed(**env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MANTIS_")}
    base.update(MANTIS_HOST="0.0.0.0", MANTIS_PORT=str(free_port()), **env)
    return subprocess.run(
        [sys.executable, "-m", "service"],
        cwd=ROOT,
        env=base,
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )


@pytest.mark.parametrize(
    ("given", "missing"),
    [
        ({}, ["MANTIS_REDIS_URL", "MANTIS_TENANT_TOKENS", "MANTIS_TICKET_SECRET"]),
        (
            {"MANTIS_REDIS_URL": "redis://127.0.0.1:1/0", "MANTIS_TENANT_TOKENS": TOKEN_SPEC},
            ["MANTIS_TICKET_SECRET"],
        ),
        ({"MANTIS_TICKET_SECRET": "s", "MANTIS_TENANT_TOKENS": TOKEN_SPEC}, ["MANTIS_REDIS_URL"]),
    ],
)
def test_an_exposed_pod_refuses_to_start_without_its_secrets(
    given: dict[str, str], missing: list[str]
) -> None:
    done = start_exposed(**given)
    assert done.returncode == 2, done.stdout + done.stderr
    for name in missing:
        assert name in done.stderr
    for name in {"MANTIS_REDIS_URL", "MANTIS_TENANT_TOKENS", "MANTIS_TICKET_SECRET"} - {
        *missing
    }:
        assert name not in done.stderr
    assert "serving on" not in done.stdout


def test_loopback_and_exposure_are_told_apart() -> None:
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert Settings(host=host).exposure_problems() == []
    for host in ("0.0.0.0", "::", "10.0.0.5", "events.internal"):
        assert Settings(host=host).exposure_problems() == [
            "MANTIS_REDIS_URL",
            "MANTIS_TENANT_TOKENS",
            "MANTIS_TICKET_SECRET",
        ]


async def test_without_a_ticket_secret_the_key_is_per_process_and_says_so(
    service, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="mantis.tickets"):
        await service()
    assert any("MANTIS_TICKET_SECRET is not set" in r.getMessage() for r in caplog.records)


def test_the_new_settings_are_read_and_validated() -> None:
    from service.settings import SettingsError

    settings = Settings.from_env(
        {
            "MANTIS_DRAIN_S": "0",
            "MANTIS_TENANT_MAX_STREAMS": "7",
            "MANTIS_PAGE_MAX_BYTES": "1000",
            "MANTIS_REPLAY_BATCH_BYTES": "2000",
        }
    )
    assert (settings.drain_s, settings.tenant_max_streams) == (0, 7)
    assert (settings.page_max_bytes, settings.replay_batch_bytes) == (1000, 2000)
    defaults = Settings.from_env({})
    assert (defaults.drain_s, defaults.tenant_max_streams) == (5, 1000)
    assert (defaults.page_max_bytes, defaults.replay_batch_bytes) == (8 << 20, 1 << 20)
    for name, bad in (
        ("MANTIS_DRAIN_S", "-1"),
        ("MANTIS_DRAIN_S", "soon"),
        ("MANTIS_TENANT_MAX_STREAMS", "0"),
        ("MANTIS_TENANT_MAX_STREAMS", "1.5"),
        ("MANTIS_PAGE_MAX_BYTES", "0"),
        ("MANTIS_REPLAY_BATCH_BYTES", "lots"),
    ):
        with pytest.raises(SettingsError, match=name):
            Settings.from_env({name: bad})
