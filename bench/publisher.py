"""The publisher: a runner-side process that appends rows through ``AsyncBridge``.

Runs as its own process (``python -m bench.publisher REDIS_URL TENANT``), driven op by op
by the orchestrator. Each row is ``{"kind": "step", "seq": k, "sent_ns": ..., "pad": ...}``
(about 100 bytes once the bridge stamps ``ts``): ``seq`` counts from 1 per run and
``sent_ns`` is ``time.time_ns()`` when the row is made, so the load generator can check
order and measure publish-to-receive latency on the same clock.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from runlog.calls import Call, LogLimits, append_call
from runner_bridge import AsyncBridge
from runner_bridge.bridge import AsyncRunHandle

from .pacing import PacedLoop
from .worker import run, serve

# {"kind":"step","seq":123,"sent_ns":1764358000000000000,"pad":"...","ts":"...Z"} ~ 100 B
PAD = "x" * 16


class Publisher(PacedLoop):
    """Run handles, per-run sequence numbers, and the paced loop sending through the bridge."""

    def __init__(self, url: str, tenant: str) -> None:
        super().__init__()
        self.tenant = tenant
        self.limits = LogLimits()
        self.bridge = AsyncBridge.from_url(url, limits=self.limits)
        self.handles: dict[str, AsyncRunHandle] = {}

    def row(self, run_id: str) -> dict[str, Any]:
        seq = self.seq[run_id] + 1
        self.seq[run_id] = seq
        return {"kind": "step", "seq": seq, "sent_ns": time.time_ns(), "pad": PAD}

    async def op_open(self, runs: list[str], phase: str = "running") -> dict[str, Any]:
        """Open each run and move it to ``phase``; returns each run's log epoch."""
        epochs: dict[str, str] = {}
        for run_id in runs:
            handle = await self.bridge.open_run(run_id, tenant=self.tenant)
            event_id = await handle.set_phase(phase)
            self.handles[run_id] = handle
            self.seq[run_id] = 0
            epochs[run_id] = event_id.rsplit("-", 1)[0]
        return {"epochs": epochs}

    async def send(self, run_ids: list[str]) -> None:
        calls: list[Call] = [append_call(r, self.row(r), self.limits) for r in run_ids]
        # One pipeline may carry rows of several runs: each script stays atomic and rows of
        # one run keep their order.
        await self.bridge.write_many(run_ids[0], calls)

    # -- bulk --------------------------------------------------------------------------

    async def op_fill(self, run: str, rows: int, batch: int = 500) -> dict[str, Any]:
        """Append ``rows`` rows as fast as pipelining allows (``append_many``)."""
        handle = self.handles[run]
        started = time.perf_counter()
        done = 0
        while done < rows:
            size = min(batch, rows - done)
            await handle.append_many([self.row(run) for _ in range(size)])
            done += size
        elapsed = time.perf_counter() - started
        return {"rows": rows, "elapsed_s": elapsed, "per_s": rows / elapsed,
                "last_seq": self.seq[run]}

    async def op_sequential(self, run: str, rows: int) -> dict[str, Any]:
        """Append ``rows`` rows one awaited ``append`` at a time (one round trip each)."""
        handle = self.handles[run]
        started = time.perf_counter()
        for _ in range(rows):
            await handle.append(self.row(run))
        elapsed = time.perf_counter() - started
        return {"rows": rows, "elapsed_s": elapsed, "per_s": rows / elapsed,
                "last_seq": self.seq[run]}

    async def op_finish(self, runs: list[str]) -> dict[str, Any]:
        """Move each run to ``complete`` (its terminal event ends every stream of it)."""
        for run_id in runs:
            await self.handles[run_id].finish("complete")
        return {"last_seq": {r: self.seq[r] for r in runs}}


async def main(argv: list[str]) -> None:
    pub = Publisher(argv[0], argv[1])
    try:
        await serve({
            "open": pub.op_open,
            "start": pub.op_start,
            "set_rate": pub.op_set_rate,
            "window_start": pub.op_window_start,
            "window_end": pub.op_window_end,
            "stop": pub.op_stop,
            "fill": pub.op_fill,
            "sequential": pub.op_sequential,
            "finish": pub.op_finish,
        })
    finally:
        await pub.bridge.aclose()


if __name__ == "__main__":
    run(main(sys.argv[1:]))
