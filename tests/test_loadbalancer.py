"""Two ``python -m service`` pods behind a real haproxy, on a real redis-server.

A client that follows a live run through the load balancer reconnects (soft limit, or a
pod going away) with ``Last-Event-ID``, lands on either pod, and still gets every event
exactly once, in order, until the terminal event.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from runlog.calls import LogLimits
from runner_bridge import AsyncBridge

from .conftest import ROOT, TOKENS
from .contract_support import SSE, Event, Reader, assert_contiguous, has_n, is_terminal
from .redis_server import free_port

DEPLOY_CFG = ROOT / "deploy" / "haproxy.cfg"


def haproxy_config(port: int, pods: dict[str, int]) -> str:
    """deploy/haproxy.cfg as shipped, with only the bind address and the servers replaced."""
    text = DEPLOY_CFG.read_text()
    lines = text.splitlines()
    servers = [i for i, line in enumerate(lines) if line.strip().startswith("server ")]
    binds = [i for i, line in enumerate(lines) if line.strip().startswith("bind ")]
    assert servers and len(binds) == 1, "deploy/haproxy.cfg lost its bind or server lines"
    indent = lines[servers[0]][: len(lines[servers[0]]) - len(lines[servers[0]].lstrip())]
    lines[binds[0]] = f"    bind 127.0.0.1:{port}"
    ours = [f"{indent}server {name} 127.0.0.1:{pod_port}" for name, pod_port in pods.items()]
    lines[servers[0] : servers[-1] + 1] = ours
    return "\n".join(lines) + "\n"


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, deadline_s: float = 10) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"haproxy exited: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)  # a child process's port: no event to await
    raise RuntimeError(f"haproxy did not listen in time: {log.read_text()[-2000:]}")


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[Callable[[dict[str, int]], str]]:
    """Start haproxy (-db, a child process killed at teardown) in front of named pods."""
    binary = shutil.which("haproxy")
    if binary is None:
        pytest.fail("haproxy is not installed (apt-get install -y haproxy)")
    started: list[subprocess.Popen[bytes]] = []

    def start(pods: dict[str, int]) -> str:
        port = free_port()
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text(haproxy_config(port, pods))
        log = tmp_path / "haproxy.log"
        with log.open("wb") as handle:
            proc = subprocess.Popen(
                [binary, "-f", str(cfg), "-db"], stdout=handle, stderr=subprocess.STDOUT
            )
        started.append(proc)
        _wait_port(port, proc, log)
        return f"http://127.0.0.1:{port}"

    yield start
    for proc in started:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    timeout = aiohttp.ClientTimeout(total=60, sock_read=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        yield session


async def both_pods_up(http: aiohttp.ClientSession, base: str, names: set[str]) -> None:
    """The balancer answers from every pod named (its health checks have seen them)."""
    seen: set[str] = set()
    async with asyncio.timeout(20):  # a restarted pod: rise 2 x inter 1 s, plus its start
        while not names <= seen:
            async with http.get(base + "/healthz") as resp:
                if resp.status == 200:
                    seen.add(resp.headers.get("X-Served-By", ""))
            await asyncio.sleep(0.02)  # polling haproxy's view of its backends


class Follower:
    """A client following one run through the load balancer, as the SDK's follow() does."""

    def __init__(self, http: aiohttp.ClientSession, base: str, run_id: str) -> None:
        self.http = http
        self.url = base + SSE.format(run_id=run_id)
        self.events: list[Event] = []
        self.pods: list[str] = []
        self.unclean = 0

    @property
    def cursor(self) -> str | None:
        return self.events[-1].id if self.events else None

    async def connect(self) -> tuple[aiohttp.ClientResponse, Reader] | None:
        headers = {"X-Mantis-Token": TOKENS["acme"]}
        if self.cursor:
            headers["Last-Event-ID"] = self.cursor
        resp = await self.http.get(self.url, headers=headers)
        if resp.status in (502, 503, 504):  # the balancer had no pod for us: retry
            resp.release()
            return None
        assert resp.status == 200, await resp.text()
        self.pods.append(resp.headers.get("X-Served-By", "?"))
        return resp, Reader(resp)

    def take(self, reader: Reader) -> None:
        if not reader.clean:
            self.unclean += 1
        self.events += reader.events

    @property
    def finished(self) -> bool:
        return bool(self.events) and is_terminal(self.events[-1])


async def test_reconnects_land_on_both_pods_and_lose_nothing(
    spawn_service, redis_url: str, haproxy, http
) -> None:
    pods = {
        name: spawn_service(redis_url, MANTIS_STREAM_MAX_S="0.8", MANTIS_HEARTBEAT_S="0.4")
        for name in ("pod1", "pod2")
    }
    base = haproxy({name: sp.port for name, sp in pods.items()})
    await both_pods_up(http, base, set(pods))
    async with AsyncBridge.from_url(redis_url, limits=LogLimits()) as bridge:
        run = await bridge.open_run("r1", tenant="acme")
        await run.set_phase("running")
        enough = asyncio.Event()

        async def runner() -> None:
            for i in range(5000):
                if enough.is_set():
                    break
                await run.append({"kind": "step", "step_index": i})
                await asyncio.sleep(0.01)  # a runner's pace
            await run.finish("complete")

        producing = asyncio.create_task(runner())
        follower = Follower(http, base, "r1")
        for _attempt in range(30):
            connected = await follower.connect()
            if connected is None:
                continue
            resp, reader = connected
            await reader.to_end(within=10)
            resp.release()
            follower.take(reader)
            if follower.finished:
                break
            if len(follower.pods) >= 4 and set(follower.pods) == set(pods):
                enough.set()
        await producing
    assert follower.finished
    assert set(follower.pods) == set(pods), follower.pods
    assert len(follower.pods) >= 4
    assert follower.unclean == 0, "a soft-limited stream ended mid-event"
    assert_contiguous(follower.events, 1, follower.events[-1].n)
    steps_seen = [e.data["step_index"] for e in follower.events if e.event == "step"]
    assert steps_seen == list(range(len(steps_seen)))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_a_pod_dying_mid_stream_resumes_on_the_other(
    spawn_service, redis_url: str, haproxy, http, sig: signal.Signals
) -> None:
    pods = {name: spawn_service(redis_url) for name in ("pod1", "pod2")}
    base = haproxy({name: sp.port for name, sp in pods.items()})
    await both_pods_up(http, base, set(pods))
    async with AsyncBridge.from_url(redis_url, limits=LogLimits()) as bridge:
        run = await bridge.open_run("r1", tenant="acme")
        await run.set_phase("running")
        stop = asyncio.Event()

        async def runner() -> None:
            for i in range(5000):
                if stop.is_set():
                    break
                await run.append({"kind": "step", "step_index": i})
                await asyncio.sleep(0.005)  # a runner's pace
            await run.finish("complete")

        producing = asyncio.create_task(runner())
        follower = Follower(http, base, "r1")
        connected = await follower.connect()
        assert connected is not None
        resp, reader = connected
        await reader.until(has_n(30))
        victim = pods[follower.pods[0]]
        victim.proc.send_signal(sig)
        await reader.to_end(within=15)
        resp.release()
        follower.take(reader)
        if sig == signal.SIGTERM:
            assert reader.clean, "a pod shutting down ends its streams at an event boundary"
        before = len(follower.events)
        for _attempt in range(20):
            connected = await follower.connect()
            if connected is None:
                continue
            resp, reader = connected
            target = has_n(follower.events[-1].n + 30)
            await reader.until(target, within=15)
            if target(reader):
                # 30 more events arrived on this connection: let the run finish. (A
                # reconnect can still land on the dying pod in the moment between its
                # SIGTERM and its listener closing; that stream ends at once and the
                # client simply reconnects again.)
                stop.set()
            await reader.to_end(within=15)
            resp.release()
            follower.take(reader)
            if follower.finished:
                break
        await producing
        await asyncio.to_thread(victim.proc.wait, 15)
    assert follower.finished
    assert len(follower.events) > before + 30
    survivors = set(pods) - {follower.pods[0]}
    assert follower.pods[-1] in survivors, follower.pods
    assert_contiguous(follower.events, 1, follower.events[-1].n)
    steps_seen = [e.data["step_index"] for e in follower.events if e.event == "step"]
    assert steps_seen == list(range(len(steps_seen)))


class RollingFollower(Follower):
    """A follower that, like an EventSource, reconnects whenever its stream ends."""

    async def follow(self, attempts: int = 300) -> None:
        for _attempt in range(attempts):
            try:
                connected = await self.connect()
            except aiohttp.ClientError:
                connected = None
            if connected is None:
                await asyncio.sleep(0.1)  # the balancer had no pod: retry shortly
                continue
            resp, reader = connected
            try:
                await reader.to_end(within=60)
            finally:
                resp.release()
            self.take(reader)
            if self.finished:
                return
            if not reader.events:
                await asyncio.sleep(0.1)  # told to retry later (a draining pod)


@pytest.mark.slow
async def test_a_rolling_restart_strands_no_client_and_loses_nothing(
    spawn_service, redis_url: str, haproxy
) -> None:
    """Three pods restarted one after another (SIGTERM, wait, start again on the same port)
    under 300 live streams: every client reaches the terminal event of its run with every
    event exactly once, in order."""
    env = {"MANTIS_DRAIN_S": "3", "MANTIS_HEARTBEAT_S": "1"}
    names = ("pod1", "pod2", "pod3")
    pods = {name: spawn_service(redis_url, **env) for name in names}
    base = haproxy({name: sp.port for name, sp in pods.items()})
    runs, per_run = 30, 10
    timeout = aiohttp.ClientTimeout(total=None, sock_read=20)
    async with (
        aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as http,
        AsyncBridge.from_url(redis_url, limits=LogLimits()) as bridge,
    ):
        await both_pods_up(http, base, set(names))
        handles = [await bridge.open_run(f"rr{i}", tenant="acme") for i in range(runs)]
        for handle in handles:
            await handle.set_phase("running")
        stop = asyncio.Event()

        async def produce(handle) -> None:  # type: ignore[no-untyped-def]
            for i in range(100_000):
                if stop.is_set():
                    break
                await handle.append({"kind": "step", "step_index": i})
                await asyncio.sleep(0.25)  # a runner's pace
            await handle.finish("complete")

        producers = [asyncio.create_task(produce(h)) for h in handles]
        followers = [RollingFollower(http, base, f"rr{i % runs}") for i in range(runs * per_run)]
        following = [asyncio.create_task(f.follow()) for f in followers]
        for _ in range(300):  # bounded: until every follower is streaming
            if all(f.pods for f in followers):
                break
            await asyncio.sleep(0.1)  # polling the followers' progress
        assert all(f.pods for f in followers), "not every follower got a stream"
        for name in names:
            victim = pods[name]
            victim.proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(victim.proc.wait, 30)
            assert code == 0, victim.log.read_text()[-2000:]
            pods[name] = spawn_service(redis_url, port=victim.port, **env)
            await both_pods_up(http, base, {name})
        stop.set()
        await asyncio.gather(*producers)
        done, pending = await asyncio.wait(following, timeout=60)
        for task in pending:
            task.cancel()
        for task in done:
            task.result()
    for sp in pods.values():
        sp.proc.send_signal(signal.SIGINT)  # SIGINT skips the drain: a quick teardown
    stranded = [f.url for f in followers if not f.finished]
    assert not stranded, f"{len(stranded)} clients never reached the terminal event"
    for f in followers:
        assert_contiguous(f.events, 1, f.events[-1].n)
        steps = [e.data["step_index"] for e in f.events if e.event == "step"]
        assert steps == list(range(len(steps)))
        assert f.unclean == 0
    moved = sum(1 for f in followers if len(set(f.pods)) > 1)
    assert moved > len(followers) // 2, "the restarts moved few clients: nothing was tested"
