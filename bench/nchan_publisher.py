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

from .pacing import PacedLoop
from .publisher import PAD
from .worker import run, serve

CONNECTIONS = 32


class NchanPublisher(PacedLoop):
    """Per-run sequence numbers and the paced loop, posting over one aiohttp session."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self.base = f"http://127.0.0.1:{port}/pub/"
        self.session: aiohttp.ClientSession | None = None

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

    async def send(self, run_ids: list[str]) -> None:
        per_run: dict[str, int] = {}
        for run_id in run_ids:
            per_run[run_id] = per_run.get(run_id, 0) + 1
        await asyncio.gather(*(self._post_rows(r, k) for r, k in per_run.items()))

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
