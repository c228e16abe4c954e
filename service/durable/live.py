"""Live tailing of durable streams through the pod's one pub/sub connection.

A stream with live readers on this pod is one ``Tail``: its channel is subscribed once
(via ``Hub.listen``) and each announcement is decoded once and handed to every reader
waiting on it. Delivering an announced append costs the pod no Redis command: a reader
sitting at the announced change's previous position sends its data as is, and only a
reader that finds a gap (it read before a change it then missed) reads the store again.
"""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import RedisError

from runlog.durable_announce import Change, decode
from runlog.keys import durable_live_channel

from ..errors import StoreUnavailable
from ..hub import Hub

log = logging.getLogger("mantis.durable")


class Reader:
    """One live request: the changes announced since it started following."""

    __slots__ = ("changes", "lost", "signal", "tail")

    def __init__(self, tail: Tail) -> None:
        self.tail = tail
        self.changes: list[Change] = []
        self.lost = False
        self.signal = asyncio.Event()

    def take(self) -> list[Change]:
        """The changes received so far (cleared)."""
        changes, self.changes = self.changes, []
        self.signal.clear()
        return changes

    async def wait(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for a change (or the connection's loss)."""
        return await wait_signal(self.signal, bool(self.changes or self.lost), seconds)


async def wait_signal(signal: asyncio.Event, ready: bool, seconds: float) -> bool:
    """True at once when ``ready``, else once ``signal`` is set within ``seconds``."""
    if ready:
        return True
    try:
        await asyncio.wait_for(signal.wait(), seconds)
    except TimeoutError:
        return False
    return True


class Tail:
    """One followed stream on this pod: its channel and its readers."""

    __slots__ = ("channel", "dead", "readers", "ready")

    def __init__(self, channel: bytes) -> None:
        self.channel = channel
        # The hub lost its connection: this channel is no longer subscribed.
        self.dead = False
        self.readers: set[Reader] = set()
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_payload(self, payload: bytes | None) -> None:
        if payload is None:
            self.dead = True
            for reader in self.readers:
                reader.lost = True
                reader.signal.set()
            return
        try:
            change = decode(payload)
        except ValueError:
            log.warning("ignored a malformed announcement on a durable stream channel")
            return
        for reader in self.readers:
            reader.changes.append(change)
            reader.signal.set()


class LiveStreams:
    """The pod's followed durable streams."""

    def __init__(self, hub: Hub) -> None:
        self._hub = hub
        self._tails: dict[bytes, Tail] = {}

    @property
    def count(self) -> int:
        return len(self._tails)

    async def follow(self, tag: str) -> Reader:
        """A reader of the stream's changes, subscribed and confirmed: every change
        announced from now on reaches it. Pair with ``leave``. A pod that cannot hear live
        changes answers 503 rather than a live read that would never move."""
        try:
            return await self._follow(tag)
        except (TimeoutError, RedisError) as exc:
            raise StoreUnavailable("live changes cannot be reached; retry later") from exc

    def end_all(self) -> None:
        """Shutdown: every live read ends now (SSE closes, long-polls answer)."""
        for tail in list(self._tails.values()):
            tail.on_payload(None)

    async def _follow(self, tag: str) -> Reader:
        channel = durable_live_channel(tag).encode()
        tail = self._tails.get(channel)
        if tail is None or tail.dead:
            tail = self._tails[channel] = Tail(channel)
            reader = Reader(tail)
            tail.readers.add(reader)
            try:
                await self._hub.listen(channel, tail.on_payload)
            except BaseException as exc:
                self.leave(reader)
                if not tail.ready.done():
                    tail.ready.set_exception(exc)
                    tail.ready.exception()
                raise
            tail.ready.set_result(None)
            return reader
        reader = Reader(tail)
        tail.readers.add(reader)
        try:
            await asyncio.wait_for(asyncio.shield(tail.ready), timeout=5.0)
        except BaseException:
            self.leave(reader)
            raise
        return reader

    def leave(self, reader: Reader) -> None:
        tail = reader.tail
        tail.readers.discard(reader)
        if not tail.readers and self._tails.get(tail.channel) is tail:
            del self._tails[tail.channel]
            if not tail.dead and tail.ready.done() and tail.ready.exception() is None:
                self._hub.unlisten(tail.channel)
