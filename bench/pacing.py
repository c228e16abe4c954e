"""The paced publishing loop both publishers share (``bench.publisher`` through the bridge,
``bench.nchan_publisher`` over HTTP to Nchan): the same rate, shedding and windows, so the
two servers get the same load. A subclass says how a tick's rows are sent (``send``)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

TICK_S = 0.005


class PacedLoop:
    """Publish ``rate`` rows a second, round robin over the runs, between ``start`` and
    ``stop``; rows owed beyond a quarter second are counted as shed, never burst later."""

    def __init__(self) -> None:
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

    async def send(self, run_ids: list[str]) -> None:
        """Send one row for each entry of ``run_ids`` (a run may appear several times; its
        rows must keep their order)."""
        raise NotImplementedError

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
                await self.send([runs[(turn + i) % len(runs)] for i in range(due)])
                turn += due
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
        """Stop the paced loop after its current send; every row it made is sent."""
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
