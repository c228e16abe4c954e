"""Following a run's log with the official Node client (@durable-streams/client) through pod
restarts: every event arrives once, in order, and the client stops at the terminal event.

Needs Node.js (the pinned client is installed by .ci/ensure-node-tools).
"""

from __future__ import annotations

import queue
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from runlog.calls import LogLimits
from runner_bridge import Bridge

from .conftest import TOKENS
from .durable_conformance import CONFORMANCE, ensure_node_tools
from .redis_server import free_port

pytestmark = pytest.mark.timeout(180)
LINE_TIMEOUT_S = 30


class Follower:
    """``node follow-run.mjs``: its stdout lines, as they come."""

    def __init__(self, url: str, live: str, log: Path) -> None:
        self.log = log
        with log.open("w") as errors:
            self.proc = subprocess.Popen(
                ["node", "follow-run.mjs", url, TOKENS["acme"], live],
                cwd=CONFORMANCE,
                stdout=subprocess.PIPE,
                stderr=errors,
                text=True,
            )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.pump = threading.Thread(target=self._pump, daemon=True)
        self.pump.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)

    def wait_for(self, text: str) -> None:
        """Block until a printed message contains ``text``."""
        while True:
            line = self.lines.get(timeout=LINE_TIMEOUT_S)
            if line is None:
                raise AssertionError(f"the client ended before {text!r}: {self.seen}")
            self.seen.append(line)
            if text in line:
                return

    def finish(self) -> list[str]:
        while (line := self.lines.get(timeout=LINE_TIMEOUT_S)) is not None:
            self.seen.append(line)
        assert self.proc.wait(timeout=LINE_TIMEOUT_S) == 0, self.log.read_text()
        return self.seen

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.pump.join(timeout=LINE_TIMEOUT_S)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _restart(spawn_service: Callable[..., Any], pod: Any, redis_url: str) -> Any:
    pod.proc.terminate()
    pod.proc.wait(timeout=20)
    return spawn_service(redis_url, port=pod.port)


@pytest.mark.parametrize("live", ["sse", "long-poll"])
def test_node_client_follows_a_run_through_pod_restarts(
    live: str, redis_url: str, spawn_service: Callable[..., Any], tmp_path: Path
) -> None:
    import json

    ensure_node_tools()
    pod = spawn_service(redis_url, port=free_port())
    with Bridge.from_url(redis_url, limits=LogLimits()) as bridge:
        run = bridge.open_run("followed", tenant="acme")
        run.set_phase("running")
        run.append({"i": 0})
        follower = Follower(f"{pod.base}/v1/stream/runs/followed", live, tmp_path / "node.log")
        try:
            follower.wait_for('"i":0')
            pod.proc.terminate()
            pod.proc.wait(timeout=20)
            run.append({"i": 1})  # written while no pod is up
            pod = spawn_service(redis_url, port=pod.port)
            follower.wait_for('"i":1')
            pod = _restart(spawn_service, pod, redis_url)
            run.append({"i": 2})
            run.finish("complete")
            lines = follower.finish()
        finally:
            follower.kill()
    messages = [json.loads(line) for line in lines]
    ids = [m["id"] for m in messages]
    assert ids == sorted(set(ids)), "every event once, in order"
    assert [m["event"] for m in messages] == [
        "phase",
        "phase",
        "message",
        "message",
        "message",
        "phase",
        "terminal",
    ]
    assert [m["data"]["i"] for m in messages if m["event"] == "message"] == [0, 1, 2]


def test_python_client_writes_reads_and_tails(
    redis_url: str, spawn_service: Callable[..., Any]
) -> None:
    """The PyPI client (durable-streams) against ``python -m service`` over real HTTP."""
    from durable_streams import DurableStream, StreamNotFoundError, stream

    # A short long-poll: the client's first poll (made before the append) answers 204 soon.
    pod = spawn_service(redis_url, MANTIS_STREAMS_LONG_POLL_S="1")
    url = f"{pod.base}/v1/stream/py/orders"
    auth = {"Authorization": f"Bearer {TOKENS['acme']}"}
    with DurableStream.create(
        url, content_type="application/json", headers=auth, batching=False
    ) as handle:
        handle.append({"n": 1})
        # The client wraps each value in an array, so a list is one message.
        handle.append([{"n": 2}, {"n": 3}])
        tail = handle.append({"n": 4}).next_offset
        assert handle.head().offset == tail
    with stream(url, live=False, headers=auth) as res:
        assert list(res.iter_json()) == [{"n": 1}, [{"n": 2}, {"n": 3}], {"n": 4}]
        assert res.offset == tail

    def append_later() -> None:
        with DurableStream(url, headers=auth, content_type="application/json") as writer:
            writer.append({"n": 5})

    with stream(url, offset=tail, live="long-poll", headers=auth) as res:
        items = res.iter_json()
        threading.Thread(target=append_later).start()
        assert next(items) == {"n": 5}
    # Another tenant's client sees no such stream.
    other = {"Authorization": f"Bearer {TOKENS['other']}"}
    with pytest.raises(StreamNotFoundError), stream(url, live=False, headers=other) as res:
        list(res.iter_json())
