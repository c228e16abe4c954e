"""End to end through the in-process app: a run published by the bridge, read as SSE."""

from __future__ import annotations

from runner_bridge import Bridge


async def test_stream_replays_run_to_terminal(make_service, bridge: Bridge) -> None:
    svc = await make_service()
    run = bridge.open_run("r1", tenant="acme")
    run.set_phase("running")
    run.append({"kind": "step", "step_index": 1, "type": "click"})
    run.finish("complete")
    resp = await svc.client.get("/v1/runs/r1/events?sse=true", headers=svc.headers())
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    body = (await resp.read()).decode()
    names = [line[7:] for line in body.splitlines() if line.startswith("event: ")]
    assert names == ["phase", "phase", "step", "phase", "terminal"]
    assert body.startswith("retry: 2000\n\n")
