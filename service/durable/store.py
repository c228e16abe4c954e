"""Durable streams in Redis: the scripts of ``runlog.durable_scripts`` and their replies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runlog import durable_scripts as scripts
from runlog.keys import durable_keys
from runlog.pipeline import AsyncScriptPipeline

from ..store_client import StoreClient
from .errors import StreamGone, StreamNotFound
from .protocol import Producer, format_offset


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """A stream's configuration and tail."""

    content_type: str
    closed: bool
    n: int
    size: int
    incarnation: str
    ttl: str
    expires_at: str
    deleted: bool
    expires_ms: str

    @property
    def tail(self) -> str:
        return format_offset(self.n, self.size)


@dataclass(frozen=True, slots=True)
class Entry:
    """One stored append (one message in JSON mode) and the offset after it."""

    n: int
    size: int
    data: bytes
    # The number of the last entry of the append this one belongs to.
    end: int

    @property
    def offset(self) -> str:
        return format_offset(self.n, self.size)


@dataclass(frozen=True, slots=True)
class Chunk:
    """A read: the stream's state and the entries after the requested position."""

    info: StreamInfo
    entries: list[Entry]


class DurableStore:
    """The pod's durable-stream reads and writes, each one script call."""

    def __init__(self, store: StoreClient) -> None:
        self._store = store
        self._client: Any = None
        self._pipeline: AsyncScriptPipeline | None = None

    async def _call(self, source: str, tag: str, args: list[Any]) -> Any:
        client = await self._store.get()
        if self._pipeline is None or client is not self._client:
            self._client, self._pipeline = client, AsyncScriptPipeline(client)
        (reply,) = await self._pipeline.execute([(source, durable_keys(tag), args)])
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def create(
        self,
        tag: str,
        *,
        content_type: str,
        ttl: int | None,
        expires: tuple[str, int] | None,
        closed: bool,
        incarnation: str,
        messages: list[bytes],
        fork_spec: str = "",
        source_tag: str = "",
        inherited: list[Entry] | None = None,
    ) -> tuple[str, int, int, bool]:
        """``(status, n, size, closed)``; status is created, exists, conflict or gone."""
        copied: list[Any] = []
        for entry in inherited or []:
            copied += [entry.end, entry.data]
        reply = await self._call(
            scripts.CREATE,
            tag,
            [
                content_type,
                "" if ttl is None else str(ttl),
                expires[0] if expires else "",
                str(expires[1]) if expires else "",
                "1" if closed else "",
                incarnation,
                fork_spec,
                source_tag,
                len(inherited or []),
                *copied,
                *messages,
            ],
        )
        return _text(reply[0]), int(reply[1]), int(reply[2]), _text(reply[3]) == "1"

    async def append(
        self,
        tag: str,
        *,
        content_type: str,
        close: bool,
        producer: Producer | None,
        stream_seq: str | None,
        joiner: bytes,
        messages: list[bytes],
    ) -> list[str]:
        """The script's reply as text (see ``durable_scripts.APPEND``)."""
        reply = await self._call(
            scripts.APPEND,
            tag,
            [
                content_type if messages else "",
                "1" if close else "",
                producer.id if producer else "",
                producer.epoch if producer else "0",
                producer.seq if producer else "0",
                stream_seq or "",
                joiner,
                *messages,
            ],
        )
        return [_text(part) for part in reply]

    async def read(self, tag: str, after: int, count: int, *, touch: bool) -> Chunk | None:
        """Up to ``count`` entries after entry ``after``; None when there is no stream."""
        reply = await self._call(scripts.READ, tag, [after, count, "1" if touch else ""])
        if reply is None:
            return None
        meta, raw_entries = reply
        info = StreamInfo(
            content_type=_text(meta[0]),
            closed=_text(meta[1]) == "1",
            n=int(meta[2]),
            size=int(meta[3]),
            incarnation=_text(meta[4]),
            ttl=_text(meta[5]),
            expires_at=_text(meta[6]),
            deleted=_text(meta[7]) == "1",
            expires_ms=_text(meta[8]),
        )
        entries = []
        for raw_id, fields in raw_entries:
            values = dict(zip(fields[::2], fields[1::2], strict=True))
            n = int(raw_id.split(b"-", 1)[0])
            end = int(values.get(b"e", n))
            entries.append(Entry(n, int(values[b"b"]), bytes(values[b"d"]), end))
        return Chunk(info, entries)

    async def delete(self, tag: str) -> tuple[str, str]:
        """``(status, source tag)``: missing, gone, soft, or deleted (with its source)."""
        reply = [_text(part) for part in await self._call(scripts.DELETE, tag, [])]
        return reply[0], reply[1] if len(reply) > 1 else ""

    async def add_fork(self, tag: str) -> bool:
        return bool(await self._call(scripts.ADD_FORK, tag, []))

    async def drop_fork(self, tag: str) -> str:
        """Release one fork of ``tag``; returns the next source to release ('' none)."""
        reply = [_text(part) for part in await self._call(scripts.DROP_FORK, tag, [])]
        return reply[1] if reply[0] == "removed" else ""


def present(chunk: Chunk | None) -> Chunk:
    """The read, or 404 for no stream and 410 for one deleted while forks use it."""
    if chunk is None:
        raise StreamNotFound("no such stream")
    if chunk.info.deleted:
        raise StreamGone("the stream was deleted")
    return chunk
