"""Line-delimited JSON calls between the orchestrator and its load processes.

A load process (``bench.loadgen``, ``bench.publisher``) serves ops read from stdin, one
JSON object a line, and answers each with one line on stdout. The orchestrator drives it
with ``Worker.call``, every call bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import orjson

from .procs import ROOT, pinned

Handler = Callable[..., Awaitable[dict[str, Any]]]


class WorkerError(RuntimeError):
    """A load process failed an op, or died."""


async def serve(handlers: dict[str, Handler]) -> None:
    """Answer ops from stdin until ``quit`` or end of input."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout.buffer
    while True:
        line = await reader.readline()
        if not line:
            return
        request = orjson.loads(line)
        op = request.pop("op")
        reply: dict[str, Any]
        if op == "quit":
            reply = {"ok": True}
        else:
            try:
                reply = {"ok": True, **(await handlers[op](**request))}
            except Exception as exc:  # reported to the orchestrator, which decides
                reply = {"ok": False, "error": f"{op}: {type(exc).__name__}: {exc}"}
        out.write(orjson.dumps(reply) + b"\n")
        out.flush()
        if op == "quit":
            return


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run a load process's main coroutine on uvloop when installed."""
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main)


class Worker:
    """A load process started by the orchestrator, called op by op."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.name = name
        self.proc = proc
        self.log = log

    @property
    def pid(self) -> int:
        return self.proc.pid

    @classmethod
    async def start(
        cls, name: str, module: str, args: list[str], *, core: int | None, workdir: Path
    ) -> Worker:
        log = workdir / f"{name}.stderr"
        with log.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                *pinned(core, [sys.executable, "-m", module, *args]),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=err,
                limit=1 << 24, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        return cls(name, proc, log)

    def stderr_tail(self, chars: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    async def call(self, op: str, limit_s: float = 60.0, **kwargs: Any) -> dict[str, Any]:
        """Send one op and wait for its answer (at most ``limit_s`` seconds, or the op's own
        ``wait_s`` bound plus a margin)."""
        limit_s = max(limit_s, float(kwargs.get("wait_s", 0.0)) + 30.0)
        if self.proc.stdin is None or self.proc.stdout is None:
            raise WorkerError(f"{self.name} has no pipes")
        self.proc.stdin.write(orjson.dumps({"op": op, **kwargs}) + b"\n")
        try:
            await self.proc.stdin.drain()
            line = await asyncio.wait_for(self.proc.stdout.readline(), limit_s)
        except TimeoutError:
            raise WorkerError(f"{self.name}: {op} took more than {limit_s:.0f}s") from None
        except ConnectionError:
            line = b""
        if not line:
            raise WorkerError(f"{self.name} exited during {op}: {self.stderr_tail()}")
        reply: dict[str, Any] = orjson.loads(line)
        if not reply.pop("ok"):
            raise WorkerError(f"{self.name}: {reply.get('error')}")
        return reply

    async def stop(self) -> None:
        """Ask it to quit; kill it if it does not within a few seconds."""
        if self.proc.returncode is None:
            with contextlib.suppress(WorkerError, ConnectionError, RuntimeError):
                await self.call("quit", limit_s=5)
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
