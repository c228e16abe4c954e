"""Stream tickets: a browser reads one run's events without the tenant token in its URL."""

from __future__ import annotations

import asyncio
import base64
import re
import time
from datetime import UTC, datetime

import orjson
import pytest

from runner_bridge import Bridge
from service.settings import Settings
from service.tickets import ExpiredTicket, InvalidTicket, TicketBook, derive_key

from .conftest import TOKENS

T0 = 1_750_000_000.0
KEY = derive_key("test-ticket-secret")


def book(*, ttl_s: float = 300, max_life_s: float = 43_200, key: bytes = KEY) -> TicketBook:
    return TicketBook(key, tenants=TOKENS, ttl_s=ttl_s, max_life_s=max_life_s, clock=lambda: T0)


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# --- the book alone --------------------------------------------------------------------


def test_issue_then_verify_names_the_tenant() -> None:
    ticket = book().issue("acme", "r1")
    assert book().verify(ticket.token, "r1") == "acme"
    assert ticket.expires_at == T0 + 300
    assert ticket.expires_at_iso() == "2025-06-15T15:11:40.000Z"
    assert datetime.fromisoformat(ticket.expires_at_iso()).tzinfo == UTC
    # URL-safe as is, and it does not carry the tenant token.
    assert re.fullmatch(r"[A-Za-z0-9_.-]+", ticket.token)
    assert TOKENS["acme"] not in ticket.token
    assert ticket.token not in repr(ticket)


def test_ticket_is_for_one_run_only() -> None:
    ticket = book().issue("acme", "r1")
    for other in ("r2", "r1 ", "R1", "r10"):
        with pytest.raises(InvalidTicket) as caught:
            book().verify(ticket.token, other)
        assert not isinstance(caught.value, ExpiredTicket)


def test_fresh_use_needs_an_unexpired_ticket_but_a_resume_gets_the_max_life() -> None:
    tickets = book(ttl_s=300, max_life_s=3600)
    ticket = tickets.issue("acme", "r1")
    assert tickets.verify(ticket.token, "r1", now=T0 + 299.9) == "acme"
    with pytest.raises(ExpiredTicket):
        tickets.verify(ticket.token, "r1", now=T0 + 300)
    assert tickets.verify(ticket.token, "r1", resuming=True, now=T0 + 3599) == "acme"
    with pytest.raises(ExpiredTicket):
        tickets.verify(ticket.token, "r1", resuming=True, now=T0 + 3600)
    # The max life is the verifying pod's setting, so lowering it takes effect at once.
    with pytest.raises(ExpiredTicket):
        book(max_life_s=600).verify(ticket.token, "r1", resuming=True, now=T0 + 601)


def test_forged_and_malformed_tickets_are_refused() -> None:
    token = book().issue("acme", "r1").token
    _, payload, mac = token.split(".")
    other_payload = b64(orjson.dumps(["other", int(T0 * 1000), int(T0 * 1000) + 300_000]))
    longer = b64(orjson.dumps(["acme", int(T0 * 1000), int(T0 * 1000) + 10**9]))
    flipped = mac[:-2] + ("A" if mac[-2] != "A" else "B") + mac[-1]
    forged = [
        f"v1.{other_payload}.{mac}",  # another tenant under acme's MAC
        f"v1.{longer}.{mac}",  # a longer life under the old MAC
        f"v1.{payload}.{flipped}",
        f"v2.{payload}.{mac}",
        f"v1.{payload}",
        "",
        "v1..",
        "v1.!!!.???",
        "v1." + "A" * 2000 + "." + mac,
        token + "x",
    ]
    for bad in forged:
        with pytest.raises(InvalidTicket):
            book().verify(bad, "r1")
    stranger = TicketBook(b"\0" * 32, tenants=TOKENS, ttl_s=300, max_life_s=600)
    with pytest.raises(InvalidTicket):
        book().verify(stranger.issue("acme", "r1", now=T0).token, "r1")


def test_a_tenant_no_longer_configured_is_refused() -> None:
    wider = TicketBook(KEY, tenants=[*TOKENS, "gone"], ttl_s=300, max_life_s=600, clock=lambda: T0)
    with pytest.raises(InvalidTicket):
        book().verify(wider.issue("gone", "r1").token, "r1")


def test_the_key_comes_from_the_shared_secret_alone() -> None:
    # Pods sharing MANTIS_TICKET_SECRET agree; the tenant tokens play no part.
    assert derive_key("s3cret") == derive_key("s3cret")
    assert derive_key("s3cret") != derive_key("other")
    with pytest.raises(ValueError):
        derive_key("")


def test_settings_read_the_ticket_variables_and_hide_the_secret() -> None:
    settings = Settings.from_env(
        {
            "MANTIS_TICKET_SECRET": "do-not-print-me",
            "MANTIS_TICKET_TTL_S": "30",
            "MANTIS_TICKET_MAX_LIFE_S": "3600",
        }
    )
    assert settings.ticket_secret == "do-not-print-me"
    assert (settings.ticket_ttl_s, settings.ticket_max_life_s) == (30, 3600)
    assert "do-not-print-me" not in repr(settings)
    defaults = Settings.from_env({})
    assert (defaults.ticket_secret, defaults.ticket_ttl_s) == (None, 300)
    assert defaults.ticket_max_life_s == 43_200


# --- over HTTP -------------------------------------------------------------------------


def finished_run(bridge: Bridge, run_id: str = "r1", tenant: str = "acme", rows: int = 3) -> None:
    run = bridge.open_run(run_id, tenant=tenant)
    run.set_phase("running")
    for i in range(rows):
        run.append({"kind": "step", "step_index": i})
    run.finish("complete")


async def mint(svc, run_id: str = "r1", tenant: str = "acme") -> dict[str, str]:
    resp = await svc.client.post(f"/v1/runs/{run_id}/tickets", headers=svc.headers(tenant))
    assert resp.status == 201, await resp.text()
    assert resp.headers["Cache-Control"] == "no-store"
    body: dict[str, str] = await resp.json()
    return body


async def error_code(resp) -> str:
    body = await resp.json()
    return str(body["error"]["code"])


async def test_a_ticket_reads_its_run_without_the_token(make_service, bridge: Bridge) -> None:
    svc = await make_service()
    finished_run(bridge)
    before = time.time()
    body = await mint(svc)
    assert set(body) == {"ticket", "run_id", "expires_at"}
    assert body["run_id"] == "r1"
    expires = datetime.fromisoformat(body["expires_at"]).timestamp()
    assert before + 299 <= expires <= time.time() + 301
    ticket = body["ticket"]
    assert TOKENS["acme"] not in ticket

    page = await svc.client.get("/v1/runs/r1/events", params={"ticket": ticket})
    assert page.status == 200
    with_header = await svc.client.get("/v1/runs/r1/events", headers=svc.headers())
    assert (await page.json()) == (await with_header.json())

    stream = await svc.client.get("/v1/runs/r1/events", params={"ticket": ticket, "sse": "true"})
    assert stream.status == 200
    text = (await stream.read()).decode()
    names = [line[7:] for line in text.splitlines() if line.startswith("event: ")]
    assert names == ["phase", "phase", "step", "step", "step", "phase", "terminal"]


async def test_issuing_needs_the_header_and_a_run_of_the_tenant(
    make_service, bridge: Bridge
) -> None:
    svc = await make_service()
    finished_run(bridge)
    finished_run(bridge, "theirs", tenant="other")
    ticket = (await mint(svc))["ticket"]
    resp = await svc.client.post("/v1/runs/r1/tickets")
    assert (resp.status, await error_code(resp)) == (401, "unauthorized")
    # A ticket is read-only: it cannot mint more tickets.
    resp = await svc.client.post("/v1/runs/r1/tickets", params={"ticket": ticket})
    assert (resp.status, await error_code(resp)) == (401, "unauthorized")
    for run_id in ("theirs", "absent"):
        resp = await svc.client.post(f"/v1/runs/{run_id}/tickets", headers=svc.headers())
        assert (resp.status, await error_code(resp)) == (404, "run_not_found")
    resp = await svc.client.post("/v1/runs/bad.id/tickets", headers=svc.headers())
    assert (resp.status, await error_code(resp)) == (400, "invalid_run_id")


async def test_wrong_run_and_forged_tickets_get_401(make_service, bridge: Bridge) -> None:
    svc = await make_service()
    finished_run(bridge, "r1")
    finished_run(bridge, "r2")
    ticket = (await mint(svc, "r1"))["ticket"]
    forged = ticket[:-3] + ("AAA" if not ticket.endswith("AAA") else "BBB")
    for run_id, presented in (("r2", ticket), ("r1", forged), ("r1", "not-a-ticket")):
        for params in ({"ticket": presented}, {"ticket": presented, "sse": "true"}):
            resp = await svc.client.get(f"/v1/runs/{run_id}/events", params=params)
            assert (resp.status, await error_code(resp)) == (401, "unauthorized")
            assert presented not in await resp.text()


async def test_the_header_wins_over_a_ticket(make_service, bridge: Bridge) -> None:
    svc = await make_service()
    finished_run(bridge)
    ticket = (await mint(svc))["ticket"]
    # Authenticated as "other" by the header, acme's run is not found, ticket or not.
    resp = await svc.client.get(
        "/v1/runs/r1/events", params={"ticket": ticket}, headers=svc.headers("other")
    )
    assert (resp.status, await error_code(resp)) == (404, "run_not_found")


async def wait_past(expires_at: str) -> None:
    """Let a tiny TTL run out: time passing is the event here."""
    left = datetime.fromisoformat(expires_at).timestamp() - time.time()
    await asyncio.sleep(max(0.0, left) + 0.005)


async def test_an_expired_ticket_opens_nothing_new_but_a_stream_may_resume(
    make_service, bridge: Bridge
) -> None:
    svc = await make_service(ticket_ttl_s=0.001)
    finished_run(bridge)
    body = await mint(svc)
    await wait_past(body["expires_at"])
    first = (await (await svc.client.get("/v1/runs/r1/events", headers=svc.headers())).json())
    first_id = first["events"][0]["id"]
    ticket = body["ticket"]

    for params, headers in (
        ({"ticket": ticket}, {}),
        ({"ticket": ticket, "sse": "true"}, {}),
        # The grace is for an EventSource's reconnect only, not for JSON pages.
        ({"ticket": ticket}, {"Last-Event-ID": first_id}),
        ({"ticket": ticket, "sse": "true"}, {"Last-Event-ID": ""}),
    ):
        resp = await svc.client.get("/v1/runs/r1/events", params=params, headers=headers)
        assert resp.status == 401, (params, headers)
        assert "expired" in (await resp.json())["error"]["message"]

    # The grace admits a reconnect whose cursor was up to date when the ticket expired
    # (here the run had ended: 204, as for any cursor at its end)...
    last_id = first["events"][-1]["id"]
    resumed = await svc.client.get(
        "/v1/runs/r1/events", params={"ticket": ticket, "sse": "true"},
        headers={"Last-Event-ID": last_id},
    )
    assert resumed.status == 204
    # ... but not one behind events written before the expiry (tests/test_ticket_grace.py).
    behind = await svc.client.get(
        "/v1/runs/r1/events", params={"ticket": ticket, "sse": "true"},
        headers={"Last-Event-ID": first_id},
    )
    assert behind.status == 401


async def test_a_resume_after_the_max_life_is_refused(make_service, bridge: Bridge) -> None:
    svc = await make_service(ticket_ttl_s=0.001, ticket_max_life_s=0.002)
    finished_run(bridge)
    body = await mint(svc)
    await wait_past(body["expires_at"])
    await asyncio.sleep(0.003)
    resp = await svc.client.get(
        "/v1/runs/r1/events", params={"ticket": body["ticket"], "sse": "true"},
        headers={"Last-Event-ID": "0" * 8 + "-0000000001"},
    )
    assert resp.status == 401


async def test_any_pod_with_the_same_key_verifies(make_service, bridge: Bridge) -> None:
    finished_run(bridge)
    # Without MANTIS_TICKET_SECRET each process has its own random key: the same tenant
    # tokens do not make pods agree (the key is never derived from token digests).
    pod_a, pod_b = await make_service(), await make_service()
    ticket = (await mint(pod_a))["ticket"]
    assert (await pod_a.client.get("/v1/runs/r1/events", params={"ticket": ticket})).status == 200
    assert (await pod_b.client.get("/v1/runs/r1/events", params={"ticket": ticket})).status == 401

    secret_a = await make_service(ticket_secret="shared-secret")
    secret_b = await make_service(ticket_secret="shared-secret")
    stranger = await make_service(ticket_secret="another-secret")
    ticket = (await mint(secret_a))["ticket"]
    resp = await secret_b.client.get("/v1/runs/r1/events", params={"ticket": ticket})
    assert resp.status == 200
    for pod in (stranger, pod_a):
        resp = await pod.client.get("/v1/runs/r1/events", params={"ticket": ticket})
        assert resp.status == 401
