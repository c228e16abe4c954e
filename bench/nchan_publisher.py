"""The publisher for Nchan: the same rows, ops and pacing as ``bench.publisher``, sent as
HTTP POSTs to nginx's ``/pub/<run>`` on keep-alive connections.

Runs as its own process (``python -m bench.nchan_publisher PORT``). Rows of one run are
posted one after the other (each POST answered before the next), rows of different runs
concurrently, so a run's order is kept as with the bridge's pipelines.
"""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson

from .publisher import PAD, TICK_S
from .worker import run, serve

CONNECTIONS = 32


class NchanPublisher:
    """Per-run sequence numbers and the paced loop, over one aiohttp session."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}/pub/"
        self.session: aiohttp.ClientSession | None = None
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

    def _session(self) -> aiohttp.ClientSession:
        if self.session is None:
            connector = aiohttp.TCPConnector(limit=CONNECTIONS, force_close=False)
            self.session = aiohttp.ClientSession(connector=connector)
        return self.session

    def row(self, run_id: str) -> bytes:
        seq = self.seq[run_id] + 1
        self.seq[run_id] = seq
        # The bridge stamps ``ts``: the same size of row on the wire.
        ts = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
        return orjson.dumps({"kind": "step", "seq": seq, "sent_ns": time.time_ns(), "pad": PAD,
                             "ts": ts})

    async def _post(self, run_id: str, event: str, body: bytes) -> None:
        headers = {"X-EventSource-Event": event, "Content-Type": "application/json"}
        async with self._session().post(self.base + run_id, data=body, headers=headers) as resp:
            await resp.read()
            if resp.status >= 300:
                raise RuntimeError(f"nchan publish {run_id}: HTTP {resp.status}")

    async def _post_rows(self, run_id: str, count: int) -> None:
        for _ in range(count):
            await self._post(run_id, "step", self.row(run_id))

    async def op_open(self, runs: list[str], phase: str = "running") -> dict[str, Any]:
        """Two phase events per run (the service's queued and running), so a subscriber
        starts with the same two events as on the service."""
        for run_id in runs:
            self.seq[run_id] = 0
            await self._post(run_id, "phase", b'{"phase":"queued"}')
            await self._post(run_id, "phase", orjson.dumps({"phase": phase}))
        return {"epochs": {r: "nchan" for r in runs}}

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
                self.shed += int(owed - cap)
                owed = cap
            due = int(owed)
            if due:
                per_run: dict[str, int] = {}
                for _ in range(due):
                    run_id = runs[turn % len(runs)]
                    turn += 1
                    per_run[run_id] = per_run.get(run_id, 0) + 1
                await asyncio.gather(*(self._post_rows(r, k) for r, k in per_run.items()))
                owed -= due
                self.sent += due
                self.win_sent += due
                self.max_pipeline = max(self.max_pipeline, due)
            await asyncio.sleep(max(0.0, TICK_S - (time.perf_counter() - now)))

    async def op_start(self, runs: list[str], rate: float) -> dict[str, Any]:
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
        self.stopping = True
        if self.task is not None:
            await self.task
            self.task = None
        elapsed = time.perf_counter() - self.started
        return {"sent": self.sent, "rate": self.sent / elapsed if elapsed > 0 else 0.0,
                "shed": self.shed, "max_pipeline": self.max_pipeline,
                "last_seq": dict(self.seq)}

    async def op_finish(self, runs: list[str]) -> dict[str, Any]:
        """The terminal event to every run's subscribers."""
        await asyncio.gather(*(self._post(r, "terminal", b'{"phase":"complete"}') for r in runs))
        return {"last_seq": {r: self.seq[r] for r in runs}}


async def main(argv: list[str]) -> None:
    pub = NchanPublisher(int(argv[0]))
    try:
        await serve({
            "open": pub.op_open,
            "start": pub.op_start,
            "set_rate": pub.op_set_rate,
            "window_start": pub.op_window_start,
            "window_end": pub.op_window_end,
            "stop": pub.op_stop,
            "finish": pub.op_finish,
        })
    finally:
        if pub.session is not None:
            await pub.session.close()


if __name__ == "__main__":
    run(main(sys.argv[1:]))
