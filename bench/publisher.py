"""The publisher: a runner-side process that appends rows through ``AsyncBridge``.

Runs as its own process (``python -m bench.publisher REDIS_URL TENANT``), driven op by op
by the orchestrator. Each row is ``{"kind": "step", "seq": k, "sent_ns": ..., "pad": ...}``
(about 100 bytes once the bridge stamps ``ts``): ``seq`` counts from 1 per run and
``sent_ns`` is ``time.time_ns()`` when the row is made, so the load generator can check
order and measure publish-to-receive latency on the same clock.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from runlog.calls import Call, LogLimits, append_call
from runner_bridge import AsyncBridge
from runner_bridge.bridge import AsyncRunHandle

from .worker import run, serve

# {"kind":"step","seq":123,"sent_ns":1764358000000000000,"pad":"...","ts":"...Z"} ~ 100 B
PAD = "x" * 16
TICK_S = 0.005


class Publisher:
    """Run handles, per-run sequence numbers and the paced publishing loop."""

    def __init__(self, url: str, tenant: str) -> None:
        self.tenant = tenant
        self.limits = LogLimits()
        self.bridge = AsyncBridge.from_url(url, limits=self.limits)
        self.handles: dict[str, AsyncRunHandle] = {}
        self.seq: dict[str, int] = {}
        self.rate = 0.0
        self.stopping = False
        self.task: asyncio.Task[None] | None = None
        self.sent = 0
        self.shed = 0
        self.max_pipeline = 0
        self.started = 0.0
        self.win_sent = 0
        self.win_t0 = 0.0

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

    # -- paced publishing ----------------------------------------------------------------

    async def _pace(self, runs: list[str]) -> None:
        last = time.perf_counter()
        owed = 0.0
        turn = 0
        while not self.stopping:
            now = time.perf_counter()
            owed += self.rate * (now - last)
            last = now
            cap = max(1.0, self.rate * 0.25)
            if owed > cap:
                # Behind by more than a quarter second: count it, do not burst it later.
                self.shed += int(owed - cap)
                owed = cap
            due = int(owed)
            if due:
                calls: list[Call] = []
                for _ in range(due):
                    run_id = runs[turn % len(runs)]
                    turn += 1
                    calls.append(append_call(run_id, self.row(run_id), self.limits))
                # One pipeline may carry rows of several runs: each script stays atomic and
                # rows of one run keep their order.
                await self.bridge.write_many(runs[0], calls)
                owed -= due
                self.sent += due
                self.win_sent += due
                self.max_pipeline = max(self.max_pipeline, due)
            await asyncio.sleep(max(0.0, TICK_S - (time.perf_counter() - now)))

    async def op_start(self, runs: list[str], rate: float) -> dict[str, Any]:
        """Publish ``rate`` rows a second, round robin over ``runs``, until ``stop``."""
        self.rate = rate
        self.stopping = False
        self.sent = 0
        self.shed = 0
        self.started = time.perf_counter()
        self.task = asyncio.get_running_loop().create_task(self._pace(list(runs)))
        return {}

    async def op_set_rate(self, rate: float) -> dict[str, Any]:
        self.rate = rate
        return {}

    async def op_window_start(self) -> dict[str, Any]:
        self.win_sent = 0
        self.win_t0 = time.perf_counter()
        return {}

    async def op_window_end(self) -> dict[str, Any]:
        wall = time.perf_counter() - self.win_t0
        return {"sent": self.win_sent, "wall_s": wall, "rate": self.win_sent / wall,
                "shed": self.shed}

    async def op_stop(self) -> dict[str, Any]:
        """Stop the paced loop after its current pipeline; every row it made is written."""
        self.stopping = True
        if self.task is not None:
            await self.task
            self.task = None
        elapsed = time.perf_counter() - self.started
        return {
            "sent": self.sent,
            "rate": self.sent / elapsed if elapsed > 0 else 0.0,
            "shed": self.shed,
            "max_pipeline": self.max_pipeline,
            "last_seq": dict(self.seq),
        }

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
