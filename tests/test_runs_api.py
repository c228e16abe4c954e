"""Run state and cancel: the one lifecycle move the service writes itself."""

from __future__ import annotations

from runner_bridge import Bridge


async def test_get_run_state(make_service, bridge: Bridge) -> None:
    svc = await make_service()
    bridge.open_run("st1", tenant="acme").finish("cancelled")
    resp = await svc.client.get("/v1/runs/st1", headers=svc.headers())
    assert resp.status == 200
    body = await resp.json()
    assert body["run_id"] == "st1" and body["phase"] == "cancelled"
    other = await svc.client.get("/v1/runs/st1", headers=svc.headers("other"))
    assert other.status == 404


async def test_cancel_queued_run_writes_phase_and_terminal(make_service, bridge: Bridge) -> None:
    svc = await make_service()
    bridge.open_run("c1", tenant="acme")
    resp = await svc.client.post("/v1/runs/c1/cancel", headers=svc.headers())
    assert resp.status == 200
    assert (await resp.json())["phase"] == "cancelled"
    page = await (await svc.client.get("/v1/runs/c1/events", headers=svc.headers())).json()
    assert [e["event"] for e in page["events"]] == ["phase", "phase", "terminal"]
    assert page["events"][-1]["data"] == {"phase": "cancelled", "run_id": "c1", "halt_class": None}
    assert page["done"] is True
    again = await svc.client.post("/v1/runs/c1/cancel", headers=svc.headers())
    assert again.status == 409
    assert (await again.json())["error"]["code"] == "run_finished"


async def test_cancel_needs_the_tenant_token(make_service, bridge: Bridge) -> None:
    svc = await make_service()
    bridge.open_run("c2", tenant="acme")
    assert (await svc.client.post("/v1/runs/c2/cancel")).status == 401
    assert (await svc.client.post("/v1/runs/c2/cancel", headers=svc.headers("other"))).status == 404
    state = await (await svc.client.get("/v1/runs/c2", headers=svc.headers())).json()
    assert state["phase"] == "queued"
