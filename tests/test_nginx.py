"""Two ``python -m service`` pods behind a real nginx started from deploy/nginx.conf.

A client follows a live run through nginx; the pod serving it gets SIGTERM mid-stream; its
reconnects (Last-Event-ID) land on the other pod and it still gets every event exactly
once, in order, with no buffering delaying live events on the way.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from runlog.calls import LogLimits
from runner_bridge import AsyncBridge

from .conftest import ROOT
from .contract_support import assert_contiguous, has_n
from .redis_server import free_port
from .test_loadbalancer import RollingFollower, _wait_port

DEPLOY_CFG = ROOT / "deploy" / "nginx.conf"


def nginx_config(port: int, pods: list[int], pid: Path) -> str:
    """deploy/nginx.conf as shipped: only the listen address, the servers and the pid file
    (a test's own) are replaced."""
    text = DEPLOY_CFG.read_text()
    text, listens = re.subn(r"(?m)^(\s*)listen \S+;", rf"\g<1>listen 127.0.0.1:{port};", text)
    text, pids = re.subn(r"(?m)^pid \S+;", f"pid {pid};", text)
    lines = text.splitlines()
    servers = [i for i, line in enumerate(lines) if line.strip().startswith("server 10.")]
    assert listens == 1 and pids == 1 and servers, "deploy/nginx.conf lost a line the test needs"
    first = lines[servers[0]]
    indent = first[: len(first) - len(first.lstrip())]
    options = first.strip().split(None, 2)[2]  # what follows "server <address>"
    lines[servers[0] : servers[-1] + 1] = [
        f"{indent}server 127.0.0.1:{pod_port} {options}" for pod_port in pods
    ]
    return "\n".join(lines) + "\n"


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Callable[[list[int]], str]]:
    binary = shutil.which("nginx")
    if binary is None:
        pytest.fail("nginx is not installed (apt-get install -y nginx-light)")
    started: list[subprocess.Popen[bytes]] = []

    def start(pods: list[int]) -> str:
        port = free_port()
        cfg = tmp_path / "nginx.conf"
        cfg.write_text(nginx_config(port, pods, tmp_path / "nginx.pid"))
        log = tmp_path / "nginx.log"
        with log.open("wb") as handle:
            proc = subprocess.Popen(
                [binary, "-c", str(cfg), "-e", "stderr", "-g", "daemon off;"],
                stdout=handle,
                stderr=subprocess.STDOUT,
            )
        started.append(proc)
        _wait_port(port, proc, log)
        return f"http://127.0.0.1:{port}"

    yield start
    for proc in started:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def test_a_pod_draining_behind_nginx_hands_its_client_to_the_other(
    spawn_service, redis_url: str, nginx
) -> None:
    pods = [spawn_service(redis_url, MANTIS_DRAIN_S="1") for _ in range(2)]
    base = nginx([pod.port for pod in pods])
    timeout = aiohttp.ClientTimeout(total=None, sock_read=20)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        AsyncBridge.from_url(redis_url, limits=LogLimits()) as bridge,
    ):
        async with http.get(base + "/healthz") as health:
            assert health.status == 200
            assert health.headers.get("Server", "nginx") == "nginx", "no version is named"
        run = await bridge.open_run("n1", tenant="acme")
        await run.set_phase("running")
        stop = asyncio.Event()
        written = [0]
        enough = asyncio.Event()

        async def runner() -> None:
            for i in range(5000):
                if stop.is_set():
                    break
                await run.append({"kind": "step", "step_index": i})
                written[0] = i + 1
                if written[0] >= target[0]:
                    enough.set()
                await asyncio.sleep(0.01)  # a runner's pace
            await run.finish("complete")

        target = [10**9]

        producing = asyncio.create_task(runner())
        follower = RollingFollower(http, base, "n1")
        connected = await follower.connect()
        assert connected is not None
        resp, reader = connected
        # Live events arrive one by one: nginx does not buffer the stream.
        await reader.until(has_n(20), within=10)
        victim = next(pod for pod in pods if follower.pods[0].endswith(f":{pod.port}"))
        victim.proc.send_signal(signal.SIGTERM)
        await reader.to_end(within=15)
        resp.release()
        follower.take(reader)
        assert reader.clean, "the draining pod ended the stream at an event boundary"
        before = len(follower.events)
        following = asyncio.create_task(follower.follow())
        # 40 more rows written after the move: the other pod must deliver them.
        target[0] = written[0] + 40
        await asyncio.wait_for(enough.wait(), 15)
        stop.set()
        await producing
        await asyncio.wait_for(following, 30)
        assert await asyncio.to_thread(victim.proc.wait, 15) == 0
    assert follower.finished
    assert len(follower.events) > before + 30
    assert follower.pods[-1].endswith(f":{next(p for p in pods if p is not victim).port}")
    assert_contiguous(follower.events, 1, follower.events[-1].n)
    steps = [e.data["step_index"] for e in follower.events if e.event == "step"]
    assert steps == list(range(len(steps)))
    assert follower.unclean == 0
