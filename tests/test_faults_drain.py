"""SIGTERM on a real ``python -m service`` process: readiness fails at once, the pod keeps
serving for MANTIS_DRAIN_S, then ends every stream at an event boundary and exits 0."""

from __future__ import annotations

import asyncio
import signal

import aiohttp

from runlog.calls import LogLimits
from runner_bridge import AsyncBridge

from .conftest import TOKENS
from .contract_support import PAGE, SSE, Reader


async def test_sigterm_drains_then_ends_streams_cleanly_and_exits_0(
    spawn_service, redis_url: str
) -> None:
    pod = spawn_service(redis_url, MANTIS_DRAIN_S="2", MANTIS_HEARTBEAT_S="0.5")
    headers = {"X-Mantis-Token": TOKENS["acme"]}
    timeout = aiohttp.ClientTimeout(total=30)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        AsyncBridge.from_url(redis_url, limits=LogLimits()) as bridge,
    ):
        for _ in range(200):  # bounded: the pod's store client is made on first use
            async with http.get(pod.base + "/readyz") as ready:
                if ready.status == 200:
                    break
            await asyncio.sleep(0.02)
        assert ready.status == 200
        run = await bridge.open_run("d1", tenant="acme")
        await run.set_phase("running")
        resp = await http.get(pod.base + SSE.format(run_id="d1"), headers=headers)
        assert resp.status == 200
        reader = Reader(resp)
        await reader.until(lambda r: len(r.events) >= 2)

        pod.proc.send_signal(signal.SIGTERM)
        body = {}
        for _ in range(100):  # "at once": the signal handler runs on the pod's next turn
            async with http.get(pod.base + "/readyz") as ready:
                if ready.status == 503:
                    body = await ready.json()
                    break
            await asyncio.sleep(0.01)
        assert body.get("reason") == "draining"
        async with http.get(pod.base + "/healthz") as health:
            assert health.status == 200  # alive: a liveness probe must not kill a draining pod
        # New streams are told to retry (elsewhere); pages are still served.
        async with http.get(pod.base + SSE.format(run_id="d1"), headers=headers) as turned:
            assert turned.status == 200
            assert (await turned.read()).endswith(b": unavailable\n\n")
        async with http.get(pod.base + PAGE.format(run_id="d1"), headers=headers) as page:
            assert page.status == 200
        # The open stream keeps being served during the drain.
        await run.append({"kind": "step", "step_index": 1})
        await reader.until(lambda r: any(e.event == "step" for e in r.events), within=5)
        assert not reader.ended
        # Then it ends, at an event boundary, and the process exits 0.
        await reader.to_end(within=15)
        resp.release()
        assert reader.ended and reader.clean
        code = await asyncio.to_thread(pod.proc.wait, 15)
    assert code == 0
    assert [e.event for e in reader.events] == ["phase", "phase", "step"]
