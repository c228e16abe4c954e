"""The pod-wide subscription hub: one pub/sub connection, one encoding per event per pod.

Every pod holds one Redis pub/sub connection (plus a fixed-size pool for reads). A run
that has watchers on this pod is one ``Feed``: the hub SUBSCRIBEs to its live channel
once, and each announced event is turned into SSE chunk bytes once, then written to each
watching client's transport as is. An appended event therefore costs the pod no Redis
command at all, whatever the number of its watchers. Announcements that arrive together
(one socket read) reach each client in one write.

Clients are ``Subscriber`` objects with no task or timer of their own: one ticker per
pod sends the heartbeat and ends streams at their soft limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import random
import time
from collections.abc import Callable

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from runlog.announce import decode
from runlog.keys import live_channel

from .frame_cache import FrameCache
from .live_connection import LiveConnection, Message
from .sse import PING_CHUNK, chunk, encode_event

log = logging.getLogger("mantis.hub")

# Why a stream ended, as the handler learns it from ``Subscriber.done``.
TERMINAL = "terminal"
SOFT_LIMIT = "soft_limit"
CLOSED = "closed"
SLOW = "slow_client"
SHUTDOWN = "shutdown"
STORE_LOST = "store_lost"
RESYNC = "resync"


class Subscriber:
    """One streaming client: where its bytes go and the last event number it was sent."""

    __slots__ = ("backlog_limit", "deadline", "done", "feed", "last_n", "min_t", "transport")

    def __init__(
        self,
        transport: asyncio.Transport,
        *,
        last_n: int,
        min_t: int | None,
        deadline: float,
        backlog_limit: int,
    ) -> None:
        self.transport = transport
        self.last_n = last_n
        self.min_t = min_t
        self.deadline = deadline
        self.backlog_limit = backlog_limit
        self.feed: Feed | None = None
        self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    @property
    def finished(self) -> bool:
        return self.done.done()

    def finish(self, reason: str) -> None:
        """End this stream at the current event boundary (the handler closes the response)."""
        if not self.done.done():
            self.done.set_result(reason)

    def send(self, data: bytes) -> bool:
        """Write ready chunk bytes; cut the client if its unsent backlog passes the bound."""
        transport = self.transport
        if transport.is_closing():
            self.finish(CLOSED)
            return False
        transport.write(data)
        if transport.get_write_buffer_size() > self.backlog_limit:
            # It resumes by cursor from its last whole event; nobody else waits for it.
            transport.abort()
            self.finish(SLOW)
            return False
        return True


class Feed:
    """One run watched on this pod: its channel and its live subscribers."""

    __slots__ = (
        "channel",
        "epoch",
        "id_prefix",
        "last_n",
        "ready",
        "run_id",
        "subscribers",
        "taps",
        "watchers",
    )

    def __init__(self, run_id: str, id_prefix: bytes) -> None:
        self.run_id = run_id
        self.channel = live_channel(run_id).encode()
        self.id_prefix = id_prefix
        self.epoch = id_prefix[:-1].decode()
        self.subscribers: list[Subscriber] = []
        # Readers that want the decoded events rather than SSE bytes (run logs read as
        # Durable Streams); ``None`` tells them the live connection was lost.
        self.taps: list[Tap] = []
        # Streams that asked for this feed, live or still replaying: the channel stays
        # subscribed until the last of them is done, not merely the last live one.
        self.watchers = 0
        self.last_n = 0
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()


# Receives a feed's decoded events ``(n, name, data)`` as they are announced, or ``None``.
Tap = Callable[[list[tuple[int, bytes, bytes]] | None], None]

# Receives every payload published on one extra channel (``Hub.listen``), or ``None``
# when the live connection was lost (whatever was announced meanwhile is not coming).
Sink = Callable[[bytes | None], None]


class _Extra:
    """A channel that is not a run's: its payloads go to one sink, as they come."""

    __slots__ = ("ready", "sink")

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class Hub:
    """Live fan-out for every stream of this pod."""

    def __init__(
        self,
        redis_url: str,
        *,
        heartbeat_s: float,
        stream_max_s: float,
        frames: FrameCache | None = None,
    ) -> None:
        self.frames = frames if frames is not None else FrameCache(0)
        self._url = redis_url
        self._heartbeat_s = heartbeat_s
        self._stream_max_s = stream_max_s
        self._live: LiveConnection | None = None
        self._feeds: dict[bytes, Feed] = {}
        self._extra: dict[bytes, _Extra] = {}
        self._all: set[Subscriber] = set()
        self._deadlines: list[tuple[float, int, Subscriber]] = []
        self._order = itertools.count()
        self._tasks: list[asyncio.Task[None]] = []
        self._connected = asyncio.Event()
        self._stopping = False
        # Set at shutdown: a live read arriving after it (a client reconnecting over a
        # kept-alive connection) is refused (503) instead of waiting out its time limit.
        self._closing = False

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Start the reader (which keeps the pub/sub connection open) and the ticker."""
        self._tasks = [
            asyncio.create_task(self._read_forever(), name="hub-reader"),
            asyncio.create_task(self._tick_forever(), name="hub-ticker"),
        ]

    async def stop(self) -> None:
        """End every stream at an event boundary, then stop the background tasks."""
        self.end_all(SHUTDOWN)
        self._stopping = True
        if self._live is not None:
            self._live.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @property
    def stream_count(self) -> int:
        return len(self._all)

    @property
    def feed_count(self) -> int:
        return len(self._feeds)

    def deadline(self) -> float:
        """A new stream's soft end: the limit less up to 10% jitter, so reconnects spread."""
        return time.monotonic() + self._stream_max_s * (1.0 - 0.1 * random.random())

    # -- subscribers -----------------------------------------------------------------

    def track(self, sub: Subscriber) -> None:
        """Count a stream for pings, soft limit and shutdown (replaying or live)."""
        self._all.add(sub)
        heapq.heappush(self._deadlines, (sub.deadline, next(self._order), sub))

    async def watch(self, run_id: str, id_prefix: bytes) -> Feed:
        """The run's feed, subscribed and confirmed: every event announced from now on arrives.

        Each call must be paired with one ``unwatch`` when the stream ends.
        """
        if self._closing:
            raise RedisConnectionError("the pod is shutting down")
        channel = live_channel(run_id).encode()
        feed = self._feeds.get(channel)
        if feed is None:
            feed = self._feeds[channel] = Feed(run_id, id_prefix)
            feed.watchers += 1
            try:
                await asyncio.wait_for(self._connected.wait(), timeout=5.0)
                if self._live is None:
                    raise RedisConnectionError("live connection not open")
                self._live.subscribe(channel)
            except BaseException:
                self.unwatch(feed)
                raise
        else:
            feed.watchers += 1
        try:
            await asyncio.wait_for(asyncio.shield(feed.ready), timeout=5.0)
            if self._closing:  # shutdown began while we waited: nothing would end us
                raise RedisConnectionError("the pod is shutting down")
        except BaseException:
            self.unwatch(feed)
            raise
        return feed

    async def listen(self, channel: bytes, sink: Sink) -> None:
        """Subscribe ``channel`` for ``sink`` and wait for Redis to confirm it.

        Other services' streams (Durable Streams) ride on the pod's one pub/sub connection
        this way; each channel has one sink, which fans out to its own readers. Pair each
        successful call with one ``unlisten``.
        """
        if self._closing:
            raise RedisConnectionError("the pod is shutting down")
        extra = self._extra[channel] = _Extra(sink)
        try:
            await asyncio.wait_for(self._connected.wait(), timeout=5.0)
            if self._live is None:
                raise RedisConnectionError("live connection not open")
            self._live.subscribe(channel)
            await asyncio.wait_for(asyncio.shield(extra.ready), timeout=5.0)
        except BaseException:
            self.unlisten(channel)
            raise

    def unlisten(self, channel: bytes) -> None:
        """Stop delivering ``channel`` (unsubscribed, unless the connection is gone)."""
        if self._extra.pop(channel, None) is None:
            return
        if self._live is not None and self._connected.is_set():
            with contextlib.suppress(RedisError):
                self._live.unsubscribe(channel)

    def unwatch(self, feed: Feed) -> None:
        """A stream that watched ``feed`` is done; the last one unsubscribes the channel."""
        feed.watchers -= 1
        if feed.watchers <= 0:
            self._drop_feed(feed)

    def go_live(self, feed: Feed, sub: Subscriber) -> None:
        """Start live delivery to ``sub``; call with no await since its replay caught up."""
        sub.feed = feed
        feed.subscribers.append(sub)

    def release(self, sub: Subscriber) -> None:
        """Forget a finished stream (its feed stays until ``unwatch``)."""
        self._all.discard(sub)
        feed = sub.feed
        if feed is None:
            return
        sub.feed = None
        with contextlib.suppress(ValueError):
            feed.subscribers.remove(sub)

    def _drop_feed(self, feed: Feed) -> None:
        if self._feeds.get(feed.channel) is not feed:
            return
        del self._feeds[feed.channel]
        if self._live is not None and self._connected.is_set():
            with contextlib.suppress(RedisError):
                self._live.unsubscribe(feed.channel)

    def end_all(self, reason: str) -> None:
        """End every stream of this pod (shutdown, or the live connection was lost)."""
        if reason == SHUTDOWN:
            self._closing = True
        for sub in list(self._all):
            sub.finish(reason)
        for feed in list(self._feeds.values()):
            for tap in list(feed.taps):
                tap(None)

    # -- the live path ---------------------------------------------------------------

    def on_messages(self, batch: list[Message]) -> None:
        """Everything one socket read brought: confirmations, then events grouped by run."""
        feeds = self._feeds
        pending: dict[Feed, list[bytes]] = {}
        for message in batch:
            kind = message[0]
            if kind == b"message":
                feed = feeds.get(message[1])
                if feed is not None:
                    payloads = pending.get(feed)
                    if payloads is None:
                        pending[feed] = [message[2]]
                    else:
                        payloads.append(message[2])
                elif (extra := self._extra.get(message[1])) is not None:
                    extra.sink(message[2])
            elif kind == b"subscribe":
                feed = feeds.get(message[1])
                if feed is not None and not feed.ready.done():
                    feed.ready.set_result(None)
                elif (extra := self._extra.get(message[1])) is not None and not extra.ready.done():
                    extra.ready.set_result(None)
        for feed, payloads in pending.items():
            self.deliver(feed, payloads)

    def deliver(self, feed: Feed, payloads: list[bytes]) -> None:
        """Fan announced events out to the feed's live subscribers, encoded once each."""
        events: list[tuple[int, int, bytes, bool]] = []
        decoded: list[tuple[int, bytes, bytes]] = []
        for payload in payloads:
            n, t, name, data = decode(payload)
            if feed.taps:
                decoded.append((n, name, data))
            if n <= feed.last_n:
                if n == 1:
                    # The log was lost and re-created: these clients' cursors belong to the
                    # old incarnation; they reconnect and get a gap event.
                    for sub in list(feed.subscribers):
                        sub.finish(RESYNC)
                continue
            feed.last_n = n
            event = encode_event(name, feed.id_prefix + b"%010d" % n, data)
            is_terminal = name == b"terminal"
            self.frames.put(feed.run_id, feed.epoch, n, event, is_terminal)
            events.append((n, t, chunk(event), is_terminal))
        for tap in list(feed.taps):
            tap(decoded)
        if not events:
            return
        for sub in feed.subscribers:
            if sub.finished:
                continue
            last = sub.last_n
            min_t = sub.min_t
            parts: list[bytes] = []
            ending = ""
            for n, t, frame, is_terminal in events:
                if n <= last:
                    continue
                if n != last + 1:
                    # A live message went missing: this client cannot be served in order
                    # from here, so it resumes by cursor from the log instead.
                    ending = RESYNC
                    break
                last = n
                if min_t is None or t > min_t:
                    parts.append(frame)
                if is_terminal:
                    ending = TERMINAL
                    break
            if parts:
                sub.send(parts[0] if len(parts) == 1 else b"".join(parts))
            sub.last_n = last
            if ending:
                sub.finish(ending)

    async def _read_forever(self) -> None:
        backoff = 0.1
        while not self._stopping:
            try:
                await self._read_until_lost()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                if self._stopping:
                    return
                log.warning(
                    "live connection to the store lost (%s); streams will resume",
                    type(exc).__name__,
                )
            if self._connected.is_set():
                backoff = 0.1  # it had been up: retry promptly
            self._connected.clear()
            self._live = None
            # Events announced while we were away are not coming back on this channel:
            # every stream ends at an event boundary and resumes by cursor from the log.
            self.end_all(STORE_LOST)
            for feed in self._feeds.values():
                if not feed.ready.done():
                    feed.ready.set_exception(RedisConnectionError("live connection lost"))
                    feed.ready.exception()  # its waiter, if any, sees it; no "never retrieved"
            self._feeds.clear()
            extras, self._extra = self._extra, {}
            for extra in extras.values():
                if not extra.ready.done():
                    extra.ready.set_exception(RedisConnectionError("live connection lost"))
                    extra.ready.exception()
                extra.sink(None)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _read_until_lost(self) -> None:
        live = await LiveConnection.open(self._url, self.on_messages)
        self._live = live
        self._connected.set()
        reason = await live.wait_closed()
        raise RedisConnectionError("live connection closed") from reason

    # -- the ticker ------------------------------------------------------------------

    async def _tick_forever(self) -> None:
        tick = min(1.0, self._heartbeat_s / 2, self._stream_max_s / 10)
        next_ping = time.monotonic() + self._heartbeat_s
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            self._expire(now)
            if now >= next_ping:
                next_ping = now + self._heartbeat_s
                self._ping_all()

    def _expire(self, now: float) -> None:
        heap = self._deadlines
        while heap and (heap[0][0] <= now or heap[0][2].finished):
            _, _, sub = heapq.heappop(heap)
            sub.finish(SOFT_LIMIT)

    def _ping_all(self) -> None:
        for sub in list(self._all):
            if not sub.finished:
                sub.send(PING_CHUNK)
