"""Shared helpers of the black-box contract tests (CONTRACT section 3).

A strict SSE parser that fails on anything a browser could read differently from what
the service meant, readers for aiohttp responses and for raw sockets, and shortcuts to
publish many rows through the bridge.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import ClientPayloadError, ClientResponse

from runlog.calls import append_call
from runlog.scripts import APPEND_ROW
from runner_bridge import AsyncBridge, Bridge

EVENT_ID_RE = re.compile(r"[0-9a-z]{11,12}-[0-9]{10,19}")
TOKEN_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
SSE = "/v1/runs/{run_id}/events?sse=true"
PAGE = "/v1/runs/{run_id}/events"


class FramingError(AssertionError):
    """The bytes on the wire are not the SSE the contract promises."""


@dataclass(frozen=True)
class Event:
    """One dispatched SSE event: name, id (None when absent), parsed JSON data."""

    event: str
    id: str | None
    data: Any
    raw_data: str

    @property
    def n(self) -> int:
        """The event's position in the run's log (from its id)."""
        if self.id is None:
            raise FramingError(f"{self.event} event has no id")
        return int(self.id.rsplit("-", 1)[1])


@dataclass(frozen=True)
class Comment:
    text: str


@dataclass(frozen=True)
class Retry:
    ms: int


Item = Event | Comment | Retry


def _fail(message: str, block: bytes) -> FramingError:
    return FramingError(f"{message}: {block[:300]!r}")


def parse_block(block: bytes) -> Item:
    """One blank-line-terminated SSE block, read strictly."""
    if b"\r" in block:
        # A bare CR is a line break to a browser's parser: framing would differ.
        raise _fail("carriage return inside an SSE block", block)
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _fail(f"block is not UTF-8 ({exc})", block) from None
    lines = text.split("\n")
    if any(line == "" for line in lines):
        raise _fail("unexpected blank line", block)
    if all(line.startswith(":") for line in lines):
        if len(lines) != 1:
            raise _fail("several comment lines in one block", block)
        return Comment(lines[0][1:].strip())
    if lines[0].startswith("retry:"):
        if len(lines) != 1 or not re.fullmatch(r"retry: \d+", lines[0]):
            raise _fail("malformed retry block", block)
        return Retry(int(lines[0][len("retry: ") :]))
    fields: dict[str, str] = {}
    for line in lines:
        match = re.fullmatch(r"(event|id|data): (.*)", line)
        if match is None:
            raise _fail(f"unexpected line {line[:80]!r}", block)
        name, value = match.groups()
        if name in fields:
            raise _fail(f"two {name} lines in one event (data must be one line)", block)
        fields[name] = value
    if "event" not in fields or "data" not in fields:
        raise _fail("event without an event or data line", block)
    if not TOKEN_NAME_RE.fullmatch(fields["event"]):
        raise _fail("event name is not a short token", block)
    if "id" in fields and fields["id"] == "":
        raise _fail("empty id line", block)
    try:
        data = json.loads(fields["data"])
    except ValueError as exc:
        raise _fail(f"data is not one line of JSON ({exc})", block) from None
    return Event(fields["event"], fields.get("id"), data, fields["data"])


class StrictSSE:
    """Incremental strict parser: ``feed`` bytes, get complete items back."""

    def __init__(self) -> None:
        self._buf = b""
        self.raw = bytearray()

    def feed(self, data: bytes) -> list[Item]:
        self.raw += data
        self._buf += data
        items: list[Item] = []
        while (end := self._buf.find(b"\n\n")) >= 0:
            block, self._buf = self._buf[:end], self._buf[end + 2 :]
            items.append(parse_block(block))
        return items

    @property
    def at_boundary(self) -> bool:
        """True when nothing of a half-sent event is pending."""
        return self._buf == b""


def parse_body(body: bytes) -> list[Item]:
    """A whole response body; it must end at an event boundary."""
    parser = StrictSSE()
    items = parser.feed(body)
    if not parser.at_boundary:
        raise FramingError(f"body ends mid-event: {body[-200:]!r}")
    assert_no_empty_id_line(body)
    return items


def assert_no_empty_id_line(body: bytes) -> None:
    """Never an ``id:`` line without a value, anywhere in the raw bytes."""
    match = re.search(rb"(?:^|[\r\n])id:[ ]?(?:[\r\n]|$)", bytes(body))
    if match:
        raise FramingError(f"empty id line at byte {match.start()}")


def events_of(items: Iterable[Item]) -> list[Event]:
    return [item for item in items if isinstance(item, Event)]


@dataclass
class StreamRead:
    """What a client read from one streaming response."""

    items: list[Item] = field(default_factory=list)
    ended: bool = False  # the server ended the response (not us stopping early)
    clean: bool = True  # it ended at an event boundary with a complete HTTP body
    raw: bytes = b""

    @property
    def events(self) -> list[Event]:
        return events_of(self.items)

    @property
    def last_id(self) -> str | None:
        ids = [e.id for e in self.events if e.id]
        return ids[-1] if ids else None


async def read_stream(
    resp: ClientResponse,
    *,
    stop: Callable[[Item], bool] | None = None,
    within: float = 15.0,
) -> StreamRead:
    """Read a streaming response until it ends (or ``stop`` says so), for ``within`` s at most."""
    parser = StrictSSE()
    out = StreamRead()
    try:
        async with asyncio.timeout(within):
            async for data in resp.content.iter_any():
                for item in parser.feed(data):
                    out.items.append(item)
                    if stop is not None and stop(item):
                        out.raw = bytes(parser.raw)
                        assert_no_empty_id_line(out.raw)
                        return out
    except ClientPayloadError:
        out.clean = False
    out.ended = True
    out.clean = out.clean and parser.at_boundary
    out.raw = bytes(parser.raw)
    assert_no_empty_id_line(out.raw)
    return out


class Reader:
    """Reads one streaming response step by step: ``until`` a condition, or ``to_end``."""

    def __init__(self, resp: ClientResponse) -> None:
        self.resp = resp
        self.parser = StrictSSE()
        self.items: list[Item] = []
        self.ended = False
        self.clean = True
        self._chunks = resp.content.iter_any()

    @property
    def events(self) -> list[Event]:
        return events_of(self.items)

    async def _step(self) -> None:
        try:
            data = await anext(self._chunks)
        except StopAsyncIteration:
            self.ended = True
            self.clean = self.clean and self.parser.at_boundary
            return
        except ClientPayloadError:
            self.ended, self.clean = True, False
            return
        self.items += self.parser.feed(data)
        assert_no_empty_id_line(bytes(self.parser.raw[-len(data) - 8 :]))

    async def until(self, done: Callable[[Reader], bool], within: float = 10.0) -> None:
        """Read until ``done(self)`` or the response ends."""
        async with asyncio.timeout(within):
            while not done(self) and not self.ended:
                await self._step()

    async def to_end(self, within: float = 15.0) -> None:
        await self.until(lambda _r: False, within)


def has_n(n: int) -> Callable[[Reader], bool]:
    """``Reader.until`` condition: event number ``n`` (or later) has arrived."""
    return lambda r: any(e.id is not None and e.n >= n for e in r.events)


def is_terminal(item: Item) -> bool:
    return isinstance(item, Event) and item.event == "terminal"


def assert_contiguous(events: list[Event], first: int, last: int) -> None:
    """Exactly events ``first..last`` of the log, once each, in order."""
    numbers = [e.n for e in events]
    assert numbers == list(range(first, last + 1)), _describe_sequence(numbers, first, last)


def _describe_sequence(numbers: list[int], first: int, last: int) -> str:
    expected = set(range(first, last + 1))
    seen: set[int] = set()
    dups = sorted({n for n in numbers if n in seen or seen.add(n)})  # type: ignore[func-returns-value]
    missing = sorted(expected - set(numbers))
    disorder = [(a, b) for a, b in itertools.pairwise(numbers) if b <= a]
    return (
        f"expected {first}..{last} once each in order; got {len(numbers)} events; "
        f"missing {missing[:20]}, duplicated {dups[:20]}, out of order at {disorder[:5]}"
    )


# -- publishing --------------------------------------------------------------------


def bulk_append(bridge: Bridge, run_id: str, rows: list[dict[str, Any]], batch: int = 1000) -> None:
    """Append many rows through the bridge's own call builder, pipelined (each still atomic)."""
    script = bridge.client.register_script(APPEND_ROW)
    for start in range(0, len(rows), batch):
        pipe = bridge.client.pipeline(transaction=False)
        for row in rows[start : start + batch]:
            source, keys, args = append_call(run_id, row, bridge.limits)
            assert source == APPEND_ROW
            script(keys=keys, args=args, client=pipe)
        pipe.execute()


async def append_rows(
    abridge: AsyncBridge, run_id: str, rows: Iterable[dict[str, Any]]
) -> list[str]:
    """Append rows one by one with the async bridge (yielding to the loop between each)."""
    run = abridge.run(run_id)
    return [await run.append(row) for row in rows]


def publish_jsonl(bridge: Bridge, path: Any, run_id: str, tenant: str = "acme") -> list[Any]:
    """Publish a reasoning.jsonl as a runner would; returns each line's row (None for phases)."""
    run = bridge.open_run(run_id, tenant=tenant)
    published: list[Any] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row.get("kind") == "phase":
            run.set_phase(row["phase"], halt_class=row.get("halt_class"))
            published.append(None)
        else:
            run.append(row)
            published.append(row)
    return published


def steps(start: int, stop: int, **extra: Any) -> list[dict[str, Any]]:
    return [{"kind": "step", "step_index": i, "type": "click", **extra} for i in range(start, stop)]


# -- raw HTTP ----------------------------------------------------------------------


class Dechunker:
    """HTTP/1.1 chunked transfer decoding that tolerates a body cut short."""

    def __init__(self) -> None:
        self._buf = b""
        self.finished = False

    def feed(self, data: bytes) -> bytes:
        self._buf += data
        out = b""
        while not self.finished:
            line_end = self._buf.find(b"\r\n")
            if line_end < 0:
                break
            size = int(self._buf[:line_end].split(b";")[0], 16)
            if size == 0:
                self.finished = True
                break
            end = line_end + 2 + size
            if len(self._buf) < end + 2:
                break
            out += self._buf[line_end + 2 : end]
            self._buf = self._buf[end + 2 :]
        return out

    @property
    def partial(self) -> bytes:
        """Bytes of a chunk that never completed (what a cut client holds of a half event)."""
        return self._buf


class RawConn:
    """A GET over a plain non-blocking socket: nothing is read unless the test asks."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.status = 0
        self.headers: dict[str, str] = {}
        self.pending = b""  # body bytes that arrived with the headers

    @classmethod
    async def get(
        cls, port: int, path: str, headers: dict[str, str], *, rcvbuf: int | None = None
    ) -> RawConn:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            # Set before connect so the advertised window stays small.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        conn = cls(sock)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, ("127.0.0.1", port))
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        await loop.sock_sendall(sock, ("\r\n".join(lines) + "\r\n\r\n").encode())
        buf = b""
        async with asyncio.timeout(10):
            while b"\r\n\r\n" not in buf:
                data = await loop.sock_recv(sock, 65536)
                if not data:
                    raise ConnectionError(f"closed before the headers: {buf[:200]!r}")
                buf += data
        head, _, conn.pending = buf.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        conn.status = int(status_line.split()[1])
        for line in header_lines:
            name, _, value = line.partition(":")
            conn.headers[name.strip().lower()] = value.strip()
        return conn

    async def recv(self, size: int = 65536) -> bytes:
        """Bytes as they come (b"" at EOF); what arrived with the headers first."""
        if self.pending:
            data, self.pending = self.pending, b""
            return data
        return await asyncio.get_running_loop().sock_recv(self.sock, size)

    async def read_to_end(self, within: float = 15.0) -> tuple[bytes, str]:
        """Everything until the peer closes: (bytes, "eof" | "reset")."""
        out = b""
        async with asyncio.timeout(within):
            while True:
                try:
                    data = await self.recv()
                except ConnectionResetError:
                    return out, "reset"
                if not data:
                    return out, "eof"
                out += data

    def close(self) -> None:
        self.sock.close()
