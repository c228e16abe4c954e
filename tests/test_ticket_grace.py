"""An expired ticket's reconnect grace is bound to what the client really received: a
resuming stream is admitted only from a cursor that was up to date when the ticket expired.
A leaked expired ticket with a forged cursor (an early id, an id ahead of the log, or a
timestamp) reads nothing written before it expired."""

from __future__ import annotations

import time

from runner_bridge import Bridge
from service.appkeys import TICKETS

from .conftest import Service


async def _stream_status(svc: Service, ticket: str, last_event_id: str) -> int:
    resp = await svc.client.get(
        f"/v1/runs/g1/events?ticket={ticket}",
        headers={"Accept": "text/event-stream", "Last-Event-ID": last_event_id},
    )
    status: int = resp.status
    resp.close()
    return status


async def test_the_grace_admits_only_an_up_to_date_cursor(make_service, bridge: Bridge) -> None:
    svc = await make_service(ticket_ttl_s=300, ticket_max_life_s=43_200)
    book = svc.client.server.app[TICKETS]
    issued_at = time.time() - 1_000  # expired 700 s ago, well within its max life
    ticket = book.issue("acme", "g1", now=issued_at).token
    expiry_ts = issued_at + 300

    def iso(t: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + "Z"

    run = bridge.open_run("g1", tenant="acme")  # event 1 (written now: after the expiry)
    first = run.append({"kind": "step", "ts": iso(expiry_ts - 200)})  # 2: before it
    before = run.append({"kind": "step", "ts": iso(expiry_ts - 100)})  # 3: before it
    run.append({"kind": "step"})  # 4: after it

    # Up to date at the expiry: every event after the cursor came later. Admitted.
    assert await _stream_status(svc, ticket, before) == 200
    # A cursor before events the ticket's holder must already have had: refused.
    assert await _stream_status(svc, ticket, first) == 401
    # Forged cursors that would replay the history through a gap: refused.
    epoch = before.rsplit("-", 1)[0]
    assert await _stream_status(svc, ticket, f"{epoch}-9999999999") == 401
    assert await _stream_status(svc, ticket, "1970-01-01T00:00:00Z") == 401
    # An unexpired ticket is not in its grace: any cursor goes.
    fresh = book.issue("acme", "g1").token
    assert await _stream_status(svc, fresh, first) == 200
