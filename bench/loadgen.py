"""The load generator: SSE clients on raw asyncio sockets that check order and timing.

Runs as its own process (``python -m bench.loadgen PORT TOKEN``), driven op by op by the
orchestrator (``bench.worker``). A client is one ``asyncio.Protocol``: no task of its own
once connected. Parsing is cheap on purpose (chunk framing, then regular expressions over
whole blocks of SSE text), so the client side stays far below one core while the server
is measured. Each step row carries ``seq`` (per run, from 1) and ``sent_ns`` (the
publisher's ``time.time_ns()``): a client counts gaps and duplicates in ``seq`` and, while
a measurement window is open, the publish-to-receive latency of every row.

A stream that ends without the terminal event (soft limit, slow-client cut, resync) is
resumed with ``Last-Event-ID`` like a browser would, and the seq check carries on across
the seam.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
import time
from typing import Any

from .httpload import load
from .stats import percentiles_ms
from .worker import run, serve

_STEP = re.compile(rb'"kind":"step","seq":(\d+),"sent_ns":(\d+)')
_TERMINAL = b"event: terminal\n"
MAX_RECONNECTS = 10
# The stream of a run; another server (Nchan, bench/nchan.py) passes its own template.
SERVICE_PATH = "/v1/runs/{run}/events?sse=true"
HEAD_TIMEOUT_S = 30.0


class Client:
    """One logical SSE client (it survives reconnects): what it expects and what it got."""

    __slots__ = (
        "done", "done_ns", "dups", "error", "events", "expect_events", "first_seq", "gaps",
        "last_id", "last_seq", "ready", "reconnects", "run", "status", "steps", "terminal",
        "unavailable",
    )

    def __init__(self, run: str, cursor: str, first_seq: int, expect_events: int | None) -> None:
        self.run = run
        self.last_id = cursor
        self.first_seq = first_seq
        self.last_seq = first_seq - 1
        self.expect_events = expect_events
        self.events = 0
        self.steps = 0
        self.gaps = 0
        self.dups = 0
        self.reconnects = 0
        self.ready = False
        self.terminal = False
        self.done = False
        self.done_ns = 0
        self.status = 0
        self.error = ""
        self.unavailable = 0


class SseProtocol(asyncio.Protocol):
    """HTTP/1.1 response head, then chunk framing, then whole SSE events to the generator."""

    def __init__(self, gen: LoadGen, client: Client, request: bytes) -> None:
        self.gen = gen
        self.client = client
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.in_head = True
        self.chunked = True
        self.ended = False
        self.buf = b""
        self.need = 0
        self.rest = b""
        self.head_seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.head_seen.done():
            self.head_seen.set_exception(ConnectionError("closed before the response head"))
            self.head_seen.exception()
        self.gen.on_closed(self)

    def data_received(self, data: bytes) -> None:
        if self.in_head:
            data = self.buf + data
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.buf = data
                return
            head = data[:end].lower()
            data = data[end + 4:]
            self.buf = b""
            self.in_head = False
            self.chunked = b"transfer-encoding: chunked" in head
            status = int(head[9:12])
            self.client.status = status
            if not self.head_seen.done():
                self.head_seen.set_result(status)
            if status != 200:
                retry_after = 1.0
                at = head.find(b"\r\nretry-after:")
                if at >= 0:
                    with contextlib.suppress(ValueError):
                        retry_after = float(head[at + 14:].split(b"\r\n", 1)[0])
                self.gen.on_status(self, status, retry_after)
                return
            if not data:
                return
        if not self.chunked:
            self.on_payload(data)
            return
        if self.buf:
            data = self.buf + data
            if len(data) < self.need:
                self.buf = data
                return
            self.buf = b""
        pos = 0
        size_all = len(data)
        parts: list[bytes] = []
        while pos < size_all:
            nl = data.find(b"\r\n", pos)
            if nl < 0:
                self.need = 0
                break
            size = int(data[pos:nl], 16)
            end = nl + 2 + size
            if end + 2 > size_all:
                self.need = end + 2 - pos
                break
            if size == 0:
                self.ended = True
                pos = size_all
                break
            parts.append(data[nl + 2:end])
            pos = end + 2
        if pos < size_all:
            self.buf = data[pos:]
        if parts:
            self.on_payload(parts[0] if len(parts) == 1 else b"".join(parts))
        if self.ended:
            self.gen.on_end(self)

    def on_payload(self, payload: bytes) -> None:
        if self.rest:
            payload = self.rest + payload
            self.rest = b""
        cut = payload.rfind(b"\n\n") + 2
        if cut < 2:
            self.rest = payload
            return
        if cut < len(payload):
            self.rest = payload[cut:]
            payload = payload[:cut]
        self.gen.on_events(self, payload)


class LoadGen:
    """Every client of this process, the measurement window and the checks."""

    def __init__(self, port: int, token: str, path: str = SERVICE_PATH) -> None:
        self.port = port
        self.token = token
        self.path = path
        self.clients: list[Client] = []
        self.protos: set[SseProtocol] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.sem = asyncio.Semaphore(100)
        self.min_events = 0
        self.settled = 0
        self.settled_event = asyncio.Event()
        self.finished = 0
        self.finished_event = asyncio.Event()
        self.connect_t0_ns = 0
        self.closing = False
        self.gaps = 0
        self.dups = 0
        self.total_events = 0
        self.window = False
        self.win_events = 0
        self.win_t0 = 0.0
        self.win_gaps = 0
        self.win_dups = 0
        self.latencies: list[int] = []

    # -- the hot path ------------------------------------------------------------------

    def on_events(self, proto: SseProtocol, block: bytes) -> None:
        """Whole SSE events of one client: count, check seq, time rows, spot the end."""
        client = proto.client
        n = block.count(b"event: ")
        if n == 0:
            return  # retry line, pings
        client.events += n
        self.total_events += n
        found = _STEP.findall(block)
        if found:
            last = client.last_seq
            if self.window:
                self.win_events += n
                now = time.time_ns()
                lat = self.latencies
                for seq_raw, sent_raw in found:
                    seq = int(seq_raw)
                    lat.append(now - int(sent_raw))
                    if seq == last + 1:
                        last = seq
                    elif seq <= last:
                        client.dups += 1
                        self.dups += 1
                    else:
                        client.gaps += seq - last - 1
                        self.gaps += seq - last - 1
                        last = seq
            else:
                for seq_raw, _sent in found:
                    seq = int(seq_raw)
                    if seq == last + 1:
                        last = seq
                    elif seq <= last:
                        client.dups += 1
                        self.dups += 1
                    else:
                        client.gaps += seq - last - 1
                        self.gaps += seq - last - 1
                        last = seq
            client.last_seq = last
            client.steps += len(found)
        elif self.window:
            self.win_events += n
        i = block.rfind(b"\nid: ")
        if i >= 0:
            client.last_id = block[i + 5:block.find(b"\n", i + 5)].decode()
        if not client.ready and client.events >= self.min_events:
            client.ready = True
            self._settle()
        if _TERMINAL in block:
            client.terminal = True
            self._finish(client)
            if proto.transport is not None:
                proto.transport.close()

    # -- lifecycle of a client ---------------------------------------------------------

    def _settle(self) -> None:
        self.settled += 1
        if self.settled >= len(self.clients):
            self.settled_event.set()

    def _finish(self, client: Client, error: str = "") -> None:
        if client.done:
            return
        client.done = True
        client.done_ns = time.time_ns()
        client.error = client.error or error
        if not client.ready:
            client.ready = True
            self._settle()
        self.finished += 1
        if self.finished >= len(self.clients):
            self.finished_event.set()

    def on_status(self, proto: SseProtocol, status: int, retry_after: float) -> None:
        client = proto.client
        client.status = status
        proto.ended = True  # no body to wait for: on_closed must not reconnect
        if proto.transport is not None:
            proto.transport.close()
        if status == 503 and client.reconnects < MAX_RECONNECTS and not self.closing:
            # What a careful client does with 503 + Retry-After: come back later (counted).
            client.unavailable += 1
            client.reconnects += 1
            self._spawn(client, delay=min(retry_after, 5.0))
            return
        # 204: the cursor is at or after the terminal event: nothing to send, and done.
        self._finish(client, "" if status == 204 else f"HTTP {status}")

    def on_end(self, proto: SseProtocol) -> None:
        """The response ended (last chunk): without the terminal event, resume by cursor."""
        if proto.transport is not None:
            proto.transport.close()

    def on_closed(self, proto: SseProtocol) -> None:
        self.protos.discard(proto)
        client = proto.client
        if client.done or self.closing or proto.in_head or client.status not in (0, 200):
            return
        if client.reconnects >= MAX_RECONNECTS:
            self._finish(client, "too many reconnects")
            return
        client.reconnects += 1
        self._spawn(client, delay=0.05)

    def _spawn(self, client: Client, delay: float = 0.0) -> None:
        task = asyncio.get_running_loop().create_task(self._open(client, delay))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _request(self, client: Client) -> bytes:
        cursor = f"Last-Event-ID: {client.last_id}\r\n" if client.last_id else ""
        return (
            f"GET {self.path.format(run=client.run)} HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{self.port}\r\nX-Mantis-Token: {self.token}\r\n"
            f"Accept: text/event-stream\r\n{cursor}\r\n"
        ).encode()

    async def _open(self, client: Client, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        loop = asyncio.get_running_loop()
        request = self._request(client)
        async with self.sem:
            if self.closing:
                return
            try:
                _transport, proto = await loop.create_connection(
                    lambda: SseProtocol(self, client, request), "127.0.0.1", self.port
                )
                self.protos.add(proto)
                status = await asyncio.wait_for(proto.head_seen, HEAD_TIMEOUT_S)
            except (OSError, TimeoutError) as exc:
                self._finish(client, f"connect: {type(exc).__name__}: {exc}")
                return
        if status == 200 and self.min_events == 0 and not client.ready:
            client.ready = True
            self._settle()

    # -- ops ---------------------------------------------------------------------------

    async def op_connect(
        self, groups: list[dict[str, Any]], min_events: int = 2, concurrency: int = 100,
        wait_s: float = 120.0,
    ) -> dict[str, Any]:
        """Open every group's clients; wait until each has ``min_events`` events (or failed)."""
        self.min_events = min_events
        self.sem = asyncio.Semaphore(concurrency)
        self.connect_t0_ns = time.time_ns()
        started = time.perf_counter()
        new: list[Client] = []
        for group in groups:
            for _ in range(int(group.get("clients", 1))):
                new.append(Client(
                    group["run"], group.get("cursor", ""), int(group.get("first_seq", 1)),
                    group.get("expect_events"),
                ))
        self.settled_event.clear()
        self.finished_event.clear()
        self.clients.extend(new)
        for client in new:
            self._spawn(client)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.settled_event.wait(), wait_s)
        failed = [c for c in new if c.done and c.error]
        return {
            "clients": len(new),
            "ready": sum(1 for c in new if c.ready and not c.error),
            "failed": len(failed),
            "errors": sorted({c.error for c in failed})[:5],
            "elapsed_s": time.perf_counter() - started,
        }

    async def op_window_start(self) -> dict[str, Any]:
        self.latencies = []
        self.win_events = 0
        self.win_gaps = self.gaps
        self.win_dups = self.dups
        self.win_t0 = time.perf_counter()
        self.window = True
        return {}

    async def op_window_end(self) -> dict[str, Any]:
        self.window = False
        wall = time.perf_counter() - self.win_t0
        return {
            "events": self.win_events,
            "wall_s": wall,
            "events_per_s": self.win_events / wall if wall > 0 else 0.0,
            "samples": len(self.latencies),
            "gaps": self.gaps - self.win_gaps,
            "dups": self.dups - self.win_dups,
            "reconnects": sum(c.reconnects for c in self.clients),
            "failed": sum(1 for c in self.clients if c.error),
            **percentiles_ms(self.latencies),
        }

    async def op_wait_seq(self, run: str, seq: int, wait_s: float = 60.0) -> dict[str, Any]:
        """Until every live client of ``run`` has received row ``seq``."""
        mine = [c for c in self.clients if c.run == run and not c.done]
        end = time.monotonic() + wait_s
        while time.monotonic() < end:
            behind = sum(1 for c in mine if c.last_seq < seq and not c.done)
            if behind == 0:
                return {"behind": 0}
            await asyncio.sleep(0.01)
        return {"behind": sum(1 for c in mine if c.last_seq < seq and not c.done)}

    async def op_wait_done(
        self, expect_last: dict[str, int] | None = None, wait_s: float = 120.0
    ) -> dict[str, Any]:
        """Until every client got its terminal event; then check each against expectations."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.finished_event.wait(), wait_s)
        expect_last = expect_last or {}
        clients = self.clients
        bad_last = [c for c in clients if c.run in expect_last and c.last_seq != expect_last[c.run]]
        bad_events = [
            c for c in clients if c.expect_events is not None and c.events != c.expect_events
        ]
        done_ns = [c.done_ns for c in clients if c.done_ns]
        errors = sorted({c.error for c in clients if c.error})
        return {
            "clients": len(clients),
            "terminal": sum(1 for c in clients if c.terminal or c.status == 204),
            "not_done": sum(1 for c in clients if not c.done),
            "failed": sum(1 for c in clients if c.error),
            "errors": errors[:5],
            "gaps": sum(c.gaps for c in clients),
            "dups": sum(c.dups for c in clients),
            "bad_last_seq": len(bad_last),
            "bad_event_count": len(bad_events),
            "events": sum(c.events for c in clients),
            "steps": sum(c.steps for c in clients),
            "reconnects": sum(c.reconnects for c in clients),
            "unavailable_503": sum(c.unavailable for c in clients),
            "span_s": (max(done_ns) - self.connect_t0_ns) / 1e9 if done_ns else None,
        }

    async def op_http_load(self, **kwargs: Any) -> dict[str, Any]:
        """Closed-loop submits or polls of the runs API (``bench.httpload``)."""
        return await load(self.port, self.token, **kwargs)

    async def op_close_all(self) -> dict[str, Any]:
        self.closing = True
        for proto in list(self.protos):
            if proto.transport is not None:
                proto.transport.abort()
        return {"closed": len(self.protos)}


async def main(argv: list[str]) -> None:
    gen = LoadGen(port=int(argv[0]), token=argv[1], path=argv[2] if len(argv) > 2 else SERVICE_PATH)
    await serve({
        "connect": gen.op_connect,
        "window_start": gen.op_window_start,
        "window_end": gen.op_window_end,
        "wait_seq": gen.op_wait_seq,
        "wait_done": gen.op_wait_done,
        "close_all": gen.op_close_all,
        "http_load": gen.op_http_load,
    })
    await gen.op_close_all()


if __name__ == "__main__":
    from .procs import raise_nofile

    raise_nofile()
    run(main(sys.argv[1:]))
