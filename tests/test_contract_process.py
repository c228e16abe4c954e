"""CONTRACT sections 1, 3 and 4 through ``python -m service`` as a child process: hashed
tokens, secrets kept out of responses and logs, and SIGTERM ending streams cleanly."""

from __future__ import annotations

import asyncio
import hashlib
import signal
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from runlog.calls import LogLimits
from runner_bridge import AsyncBridge, Bridge

from .conftest import TOKENS
from .contract_support import PAGE, SSE, Reader, assert_contiguous, has_n, steps
from .redis_server import free_port, running_redis

PASSWORD = "redis-pa55word-kept-secret"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    timeout = aiohttp.ClientTimeout(total=30, sock_read=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        yield session


def publish(url: str, run_id: str = "r1", finish: bool = True) -> None:
    with Bridge.from_url(url, limits=LogLimits()) as bridge:
        run = bridge.open_run(run_id, tenant="acme")
        run.set_phase("running")
        for row in steps(0, 3):
            run.append(row)
        if finish:
            run.finish("complete")


def spawn_without_store(spawn_service: Any, url: str, secret: str) -> Any:
    """Start the service on a store it cannot use; a crash at start fails the test."""
    try:
        return spawn_service(url)
    except RuntimeError as exc:
        assert secret not in str(exc), "the store password was printed as the service died"
        pytest.fail(f"the service did not start without a usable store: {str(exc)[-300:]}")


def stop(sp: Any) -> str:
    """SIGTERM the service, wait for it, and return its whole log."""
    sp.proc.send_signal(signal.SIGTERM)
    assert sp.proc.wait(timeout=15) == 0
    text: str = sp.log.read_text(errors="replace")
    return text


async def test_sha256_tokens_are_accepted(spawn_service, redis_url: str, http) -> None:
    digest = hashlib.sha256(TOKENS["acme"].encode()).hexdigest()
    sp = spawn_service(
        redis_url, MANTIS_TENANT_TOKENS=f"acme=sha256:{digest},other={TOKENS['other']}"
    )
    publish(redis_url)
    url = sp.base + PAGE.format(run_id="r1")
    async with http.get(url, headers={"X-Mantis-Token": TOKENS["acme"]}) as resp:
        assert resp.status == 200
        assert (await resp.json())["done"] is True
    for wrong in (digest, f"sha256:{digest}", digest.upper()):
        async with http.get(url, headers={"X-Mantis-Token": wrong}) as resp:
            assert resp.status == 401
    async with http.get(url, headers={"X-Mantis-Token": TOKENS["other"]}) as resp:
        assert resp.status == 404
    log = stop(sp)
    assert digest not in log and TOKENS["acme"] not in log and TOKENS["other"] not in log


async def test_no_secret_in_any_response_or_log_line(spawn_service, http) -> None:
    with running_redis(None, "--requirepass", PASSWORD) as (plain_url, _proc):
        url = plain_url.replace("redis://", f"redis://:{PASSWORD}@")
        sp = spawn_service(url)
        publish(url)
        publish(url, "live", finish=False)
        base = sp.base
        acme = {"X-Mantis-Token": TOKENS["acme"]}
        requests: list[tuple[str, dict[str, str]]] = [
            (PAGE.format(run_id="r1"), acme),
            (SSE.format(run_id="r1"), acme),
            (PAGE.format(run_id="r1"), {}),
            (PAGE.format(run_id="r1"), {"X-Mantis-Token": "presented-wrong-token"}),
            (PAGE.format(run_id="r1"), {"X-Mantis-Token": TOKENS["other"]}),
            (PAGE.format(run_id="nope"), acme),
            (PAGE.format(run_id="r1") + "?since=garbage", acme),
            ("/v1/runs/" + "x" * 200 + "/events", acme),
            (PAGE.format(run_id="r1") + "?limit=99999999", acme),
            ("/healthz", {}),
            ("/no/such/route", acme),
        ]
        seen: list[str] = []
        for path, headers in requests:
            async with http.get(base + path, headers=headers) as resp:
                body = await resp.text()
                seen.append(f"{resp.status} {dict(resp.headers)} {body}")
        async with http.get(base + SSE.format(run_id="live"), headers=acme) as resp:
            reader = Reader(resp)
            await reader.until(has_n(5))
            seen.append(bytes(reader.parser.raw).decode())
        log = stop(sp)
    everything = "\n".join(seen)
    assert "presented-wrong-token" not in everything
    for secret in (PASSWORD, *TOKENS.values()):
        assert secret not in everything, "a secret in a response"
        assert secret not in log, "a secret in the service's log"
    assert "serving on" in log  # the log was captured at all


async def test_wrong_store_password_is_a_503_and_never_logged(spawn_service, http) -> None:
    with running_redis(None, "--requirepass", PASSWORD) as (plain_url, _proc):
        wrong = "not-the-" + PASSWORD
        sp = spawn_without_store(
            spawn_service, plain_url.replace("redis://", f"redis://:{wrong}@"), wrong
        )
        async with http.get(
            sp.base + PAGE.format(run_id="r1"), headers={"X-Mantis-Token": TOKENS["acme"]}
        ) as resp:
            body = await resp.text()
            assert resp.status == 503, body
            assert resp.headers.get("Retry-After", "").isdigit()
        log = stop(sp)
    assert wrong not in body and wrong not in log and PASSWORD not in log


async def test_unreachable_store_at_start_serves_503(spawn_service, http) -> None:
    """Started while the store is down: the service answers 503, it does not crash."""
    dead = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"
    sp = spawn_without_store(spawn_service, dead, PASSWORD)
    async with http.get(
        sp.base + PAGE.format(run_id="r1"), headers={"X-Mantis-Token": TOKENS["acme"]}
    ) as resp:
        assert resp.status == 503
        assert resp.headers.get("Retry-After", "").isdigit()
        assert PASSWORD not in await resp.text()
    assert PASSWORD not in stop(sp)


async def test_sigterm_ends_live_streams_at_an_event_boundary(
    spawn_service, redis_url: str, http
) -> None:
    sp = spawn_service(redis_url)
    publish(redis_url, finish=False)
    readers: list[Reader] = []
    responses = []
    for _ in range(3):
        resp = await http.get(
            sp.base + SSE.format(run_id="r1"), headers={"X-Mantis-Token": TOKENS["acme"]}
        )
        responses.append(resp)
        reader = Reader(resp)
        await reader.until(has_n(5))
        readers.append(reader)
    async with AsyncBridge.from_url(redis_url, limits=LogLimits()) as bridge:
        await bridge.run("r1").append({"kind": "step", "step_index": 3})
        for reader in readers:
            await reader.until(has_n(6))
        sp.proc.send_signal(signal.SIGTERM)
        for reader in readers:
            await reader.to_end(within=10)
            assert reader.ended
            assert reader.clean, "the response was cut mid-event or without its last chunk"
            assert_contiguous(reader.events, 1, 6)
        assert await asyncio.to_thread(sp.proc.wait, 15) == 0
    for resp in responses:
        resp.release()
