"""CONTRACT section 3, errors: 401, 404 (indistinguishable), 400s, 503 with Retry-After,
and no secret in any response or log line."""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest

from runlog.calls import LogLimits
from runner_bridge import Bridge
from service.app import create_app
from service.auth import TokenTable
from service.settings import Settings

from .conftest import TOKEN_SPEC, TOKENS
from .contract_support import PAGE, SSE, steps
from .redis_server import free_port, running_redis

MODES = {"stream": {"sse": "true"}, "page": {}}


async def error_of(resp: Any, status: int, code: str) -> dict[str, Any]:
    """Check the contract's error body and return it."""
    text = await resp.text()
    assert resp.status == status, text
    assert resp.headers["Content-Type"].startswith("application/json"), resp.headers
    body: dict[str, Any] = await resp.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body


def publish(bridge: Bridge, run_id: str = "r1", tenant: str = "acme") -> None:
    run = bridge.open_run(run_id, tenant=tenant)
    run.set_phase("running")
    for row in steps(0, 2):
        run.append(row)
    run.finish("complete")


# -- 401 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "token", [None, "", "wrong-token", TOKENS["acme"] + "x", TOKENS["acme"].upper()]
)
async def test_401_without_or_with_an_unknown_token(
    make_service, bridge: Bridge, mode: str, token: str | None
) -> None:
    svc = await make_service()
    publish(bridge)
    headers = {} if token is None else {"X-Mantis-Token": token}
    resp = await svc.client.get(PAGE.format(run_id="r1"), params=MODES[mode], headers=headers)
    body = await error_of(resp, 401, "unauthorized")
    text = str(body)
    if token:
        assert token not in text, "the presented token is echoed"
    assert all(secret not in text for secret in TOKENS.values())


async def test_401_bodies_do_not_tell_absent_from_unknown(make_service, bridge: Bridge) -> None:
    svc = await make_service()
    publish(bridge)
    absent = await svc.client.get(PAGE.format(run_id="r1"))
    unknown = await svc.client.get(PAGE.format(run_id="r1"), headers={"X-Mantis-Token": "nope"})
    assert await absent.read() == await unknown.read()


# -- 404 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_404_for_an_unknown_run_and_for_another_tenants_run_look_the_same(
    make_service, bridge: Bridge, mode: str
) -> None:
    svc = await make_service()
    publish(bridge, "r1", tenant="acme")
    theirs = await svc.client.get(
        PAGE.format(run_id="r1"), params=MODES[mode], headers=svc.headers("other")
    )
    missing = await svc.client.get(
        PAGE.format(run_id="r9"), params=MODES[mode], headers=svc.headers("other")
    )
    theirs_body = await error_of(theirs, 404, "run_not_found")
    missing_body = await error_of(missing, 404, "run_not_found")
    assert str(theirs_body) == str(missing_body).replace("r9", "r1")
    skip = {"date", "content-length", "x-request-id"}  # the request id differs per request
    assert {k: v for k, v in theirs.headers.items() if k.lower() not in skip} == {
        k: v for k, v in missing.headers.items() if k.lower() not in skip
    }
    assert "acme" not in await theirs.text()
    # The owner still reads it.
    mine = await svc.client.get(PAGE.format(run_id="r1"), params=MODES[mode], headers=svc.headers())
    assert mine.status == 200


async def test_404_is_the_same_before_and_after_the_run_exists_for_another_tenant(
    make_service, bridge: Bridge
) -> None:
    svc = await make_service()
    before = await svc.client.get(PAGE.format(run_id="r1"), headers=svc.headers("other"))
    before_body = await before.read()
    publish(bridge, "r1", tenant="acme")
    after = await svc.client.get(PAGE.format(run_id="r1"), headers=svc.headers("other"))
    assert (before.status, after.status) == (404, 404)
    assert before_body == await after.read()


# -- 400 ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw_run_id",
    ["x" * 129, "a%20b", "a.b", "a:b", "%C3%A9t%C3%A9", "a%00b", "a+b"],
)
@pytest.mark.parametrize("mode", MODES)
async def test_400_invalid_run_id(make_service, bridge: Bridge, raw_run_id: str, mode: str) -> None:
    svc = await make_service()
    publish(bridge)
    query = "?sse=true" if mode == "stream" else ""
    resp = await svc.client.get(f"/v1/runs/{raw_run_id}/events{query}", headers=svc.headers())
    body = await error_of(resp, 400, "invalid_run_id")
    assert len(str(body)) < 600


async def test_longest_valid_run_id_is_accepted(make_service, bridge: Bridge) -> None:
    svc = await make_service()
    run_id = "A-z_0" * 25 + "abc"
    assert len(run_id) == 128
    publish(bridge, run_id)
    resp = await svc.client.get(PAGE.format(run_id=run_id), headers=svc.headers())
    assert resp.status == 200
    assert (await resp.json())["run_id"] == run_id


@pytest.mark.parametrize(
    "cursor",
    [
        "garbage",
        "1-0",
        "12345",
        "2026-13-45T00:00:00",
        "mx0td2ln-1",
        "MX0TD2LN-0000000001",
        "mx0td2ln-0000000001; drop",
        "x" * 5000,
    ],
)
async def test_400_invalid_cursor(make_service, bridge: Bridge, cursor: str) -> None:
    svc = await make_service()
    publish(bridge)
    for mode, params in MODES.items():
        for where in ("since", "Last-Event-ID"):
            if where == "since":
                resp = await svc.client.get(
                    PAGE.format(run_id="r1"), params={**params, "since": cursor},
                    headers=svc.headers(),
                )
            else:
                resp = await svc.client.get(
                    PAGE.format(run_id="r1"), params=params,
                    headers=svc.headers(**{"Last-Event-ID": cursor}),
                )
            body = await error_of(resp, 400, "invalid_cursor")
            assert len(body["error"]["message"]) < 400, (mode, where)


# -- 503 ----------------------------------------------------------------------------------

STORE_PASSWORD = "store-pa55word-do-not-leak"


def logged_text(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(
        record.getMessage() + (str(record.exc_info) if record.exc_info else "")
        for record in caplog.records
    )


async def check_503(resp: Any) -> None:
    body = await error_of(resp, 503, "unavailable")
    retry_after = resp.headers.get("Retry-After", "")
    assert retry_after.isdigit() and int(retry_after) > 0, retry_after
    assert STORE_PASSWORD not in str(body)
    assert "127.0.0.1" not in str(body), "the store's address is not the client's business"


async def check_unavailable(resp: Any, mode: str) -> None:
    """JSON: 503 + Retry-After. A stream (v2): 200 with a jittered retry, so browsers retry."""
    if mode != "stream":
        await check_503(resp)
        return
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    body = (await resp.read()).decode()
    match = re.fullmatch(r"retry: (\d+)\n\n: unavailable\n\n", body)
    assert match is not None, body
    assert 1000 <= int(match.group(1)) <= 3000


@pytest.mark.parametrize("mode", MODES)
async def test_503_with_retry_after_when_the_store_goes_away(
    aiohttp_client: Any, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with running_redis(None, "--requirepass", STORE_PASSWORD) as (plain_url, proc):
        url = plain_url.replace("redis://", f"redis://:{STORE_PASSWORD}@")
        with Bridge.from_url(url, limits=LogLimits()) as bridge:
            publish(bridge)
        settings = Settings(tenant_tokens=TOKEN_SPEC, redis_url=url)
        client = await aiohttp_client(
            create_app(settings, TokenTable.parse(TOKEN_SPEC), url),
            server_kwargs={"host": "127.0.0.1"},
        )
        headers = {"X-Mantis-Token": TOKENS["acme"]}
        ok = await client.get(PAGE.format(run_id="r1"), params=MODES[mode], headers=headers)
        assert ok.status == 200
        await ok.read()
        proc.terminate()
        proc.wait(timeout=10)
        resp = await client.get(PAGE.format(run_id="r1"), params=MODES[mode], headers=headers)
        await check_unavailable(resp, mode)
    logged = logged_text(caplog)
    assert STORE_PASSWORD not in logged
    assert all(token not in logged for token in TOKENS.values())


@pytest.mark.parametrize("mode", MODES)
async def test_503_with_retry_after_when_the_store_is_unreachable_from_the_start(
    aiohttp_client: Any, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A pod started while its store is down answers 503 (it does not refuse to start)."""
    caplog.set_level(logging.DEBUG)
    url = f"redis://:{STORE_PASSWORD}@127.0.0.1:{free_port()}/0"
    settings = Settings(tenant_tokens=TOKEN_SPEC, redis_url=url)
    client = await aiohttp_client(
        create_app(settings, TokenTable.parse(TOKEN_SPEC), url),
        server_kwargs={"host": "127.0.0.1"},
    )
    resp = await client.get(
        PAGE.format(run_id="r1"), params=MODES[mode], headers={"X-Mantis-Token": TOKENS["acme"]}
    )
    await check_unavailable(resp, mode)
    # Authentication still comes first.
    await error_of(await client.get(SSE.format(run_id="r1")), 401, "unauthorized")
    logged = logged_text(caplog)
    assert STORE_PASSWORD not in logged
