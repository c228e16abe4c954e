"""The pod-wide subscription hub: one pub/sub connection, one encoding per event per pod.

Every pod holds one Redis pub/sub connection (plus a fixed-size pool for reads). A run
that has watchers on this pod is one ``Feed``: the hub SUBSCRIBEs to its live channel
once, and each announced event is turned into SSE chunk bytes once, then written to each
watching client's transport as is. An appended event therefore costs the pod no Redis
command at all, whatever the number of its watchers. Announcements that arrive together
(one socket read) reach each client in one write.

Clients are ``Subscriber`` objects with no task or timer of their own: one ticker per
pod sends the heartbeat and ends streams at their soft limit.

When the pub/sub connection is lost (or stops answering the PING sent on it every
heartbeat: a half-open socket), streams stay open: the hub reconnects, subscribes every
feed again and, for each, reads from the log what was announced while it was away,
holding back new announcements until that repair is done, then carries on.
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

from runlog.announce import Announcement, decode
from runlog.failover import EPOCH_EVENT
from runlog.keys import live_channel

from . import metrics
from .frame_cache import FrameCache
from .live_connection import LiveConnection, Message
from .sse import PING, PING_CHUNK, chunk, encode_event
from .store import LogReader

log = logging.getLogger("mantis.hub")

# Why a stream ended, as the handler learns it from ``Subscriber.done``.
TERMINAL = "terminal"
SOFT_LIMIT = "soft_limit"
CLOSED = "closed"
SLOW = "slow_client"
SHUTDOWN = "shutdown"
STORE_LOST = "store_lost"
RESYNC = "resync"
DRAINED = "drained"

REPAIR_BATCH = 500
REPAIR_ATTEMPTS = 4
# A PING on the pub/sub connection unanswered this long means a half-open socket.
PONG_TIMEOUT_S = 5.0
# Streams wait this long for the pub/sub connection to come back, then end (clients resume).
LIVE_GIVE_UP_S = 30.0


class Subscriber:
    """One streaming client: where its bytes go and the last event number it was sent."""

    __slots__ = (
        "backlog_limit",
        "chunked",
        "deadline",
        "done",
        "feed",
        "last_n",
        "min_t",
        "transport",
    )

    def __init__(
        self,
        transport: asyncio.Transport,
        *,
        last_n: int,
        min_t: int | None,
        deadline: float,
        backlog_limit: int,
        chunked: bool = True,
    ) -> None:
        self.transport = transport
        # HTTP/1.1 responses are chunked; an HTTP/1.0 one is delimited by closing, and
        # gets the same frames without chunk framing.
        self.chunked = chunked
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
        """Write ready bytes (framed for this response); cut the client past the backlog bound."""
        transport = self.transport
        if transport.is_closing():
            self.finish(CLOSED)
            return False
        transport.write(data)
        if transport.get_write_buffer_size() > self.backlog_limit:
            # It resumes by cursor from its last whole event; nobody else waits for it.
            transport.abort()
            self.finish(SLOW)
            metrics.count_slow_cut()
            return False
        return True


class Feed:
    """One log (a run's, or a tenant's feed) watched on this pod: its channel and its live
    subscribers.

    ``id_prefix`` is None while the log does not exist yet (a tenant feed before its first
    run): announcements then only resolve ``appeared`` and are dropped, since no stream can
    be live on a log it has not read; the waiting streams read the log once it exists.
    """

    __slots__ = (
        "appeared",
        "channel",
        "epoch",
        "gen",
        "held",
        "id_prefix",
        "last_n",
        "lost",
        "ready",
        "run_id",
        "subscribers",
        "taps",
        "watchers",
    )

    def __init__(self, run_id: str, id_prefix: bytes | None) -> None:
        loop = asyncio.get_running_loop()
        self.run_id = run_id
        self.channel = live_channel(run_id).encode()
        self.id_prefix: bytes | None = None
        self.epoch = ""
        self.subscribers: list[Subscriber] = []
        # Readers that want the decoded events rather than SSE bytes (run logs read as
        # Durable Streams); ``None`` tells them the live connection was lost.
        self.taps: list[Tap] = []
        # Streams that asked for this feed, live or still replaying: the channel stays
        # subscribed until the last of them is done, not merely the last live one.
        self.watchers = 0
        self.last_n = 0
        self.ready: asyncio.Future[None] = loop.create_future()
        self.appeared: asyncio.Future[None] = loop.create_future()
        # Not None while the feed is being repaired after a reconnect: announcements
        # received meanwhile wait here, after what the repair reads from the log.
        self.held: list[bytes] | None = None
        self.gen = 0  # counts connection losses seen, so a stale repair knows it is stale
        # The log this feed followed is gone (lost and re-created): nobody may go live on it.
        self.lost = False
        if id_prefix is not None:
            self.know(id_prefix)

    def know(self, id_prefix: bytes) -> None:
        """The log exists with this id prefix: from now on its events are delivered."""
        if self.id_prefix is None:
            self.id_prefix = id_prefix
            self.epoch = id_prefix[:-1].decode()
        if not self.appeared.done():
            self.appeared.set_result(None)


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
        reader: LogReader,
        heartbeat_s: float,
        stream_max_s: float,
        frames: FrameCache | None = None,
        node_urls: Callable[[], list[str]] | None = None,
    ) -> None:
        self.frames = frames if frames is not None else FrameCache(0)
        self._url = redis_url
        # Where else the pub/sub connection may go (the other nodes of a cluster).
        self._node_urls = node_urls
        self._reader = reader
        self._heartbeat_s = heartbeat_s
        self._stream_max_s = stream_max_s
        self._live: LiveConnection | None = None
        self._feeds: dict[bytes, Feed] = {}
        self._extra: dict[bytes, _Extra] = {}
        self._all: set[Subscriber] = set()
        self._deadlines: list[tuple[float, int, Subscriber]] = []
        self._order = itertools.count()
        self._tasks: list[asyncio.Task[None]] = []
        self._repairs: set[asyncio.Task[None]] = set()
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
        tasks = [*self._tasks, *self._repairs]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @property
    def connected(self) -> bool:
        """Whether the pub/sub connection is up (and, as far as the last PING tells, alive)."""
        return self._connected.is_set()

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

    async def watch(self, run_id: str, id_prefix: bytes | None) -> Feed:
        """The log's feed, subscribed and confirmed: every event announced from now on arrives.

        ``id_prefix`` None: the log does not exist yet; the caller waits for
        ``Feed.appeared``, reads the log's state and calls ``Feed.know``. Each call must be
        paired with one ``unwatch`` when the stream ends.
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
            if id_prefix is not None:
                feed.know(id_prefix)
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
        if feed.lost:
            sub.finish(RESYNC)
            return
        sub.feed = feed
        feed.subscribers.append(sub)

    def release(self, sub: Subscriber) -> None:
        """Forget a finished stream (its feed stays until ``unwatch``)."""
        self._all.discard(sub)
        self._forget_deadline()
        feed = sub.feed
        if feed is None:
            return
        sub.feed = None
        with contextlib.suppress(ValueError):
            feed.subscribers.remove(sub)

    def _log_moved(self, feed: Feed) -> None:
        """The log went back (a failover lost writes) and took a new epoch (``runlog.failover``):
        every id changed, so its streams end and resume by cursor, with a ``gap`` event."""
        log.warning("log %s took a new epoch (a failover lost writes); its streams resume",
                    feed.run_id)
        feed.lost = True
        feed.held = None
        for sub in list(feed.subscribers):
            sub.finish(RESYNC)
        for tap in list(feed.taps):
            tap(None)
        self._drop_feed(feed)

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
                    if feed.held is not None:
                        feed.held.append(message[2])
                        continue
                    payloads = pending.get(feed)
                    if payloads is None:
                        pending[feed] = [message[2]]
                    else:
                        payloads.append(message[2])
                elif (extra := self._extra.get(message[1])) is not None:
                    extra.sink(message[2])
            elif kind == b"subscribe":
                feed = feeds.get(message[1])
                if feed is None:
                    extra = self._extra.get(message[1])
                    if extra is not None and not extra.ready.done():
                        extra.ready.set_result(None)
                    continue
                if not feed.ready.done():
                    feed.ready.set_result(None)
                elif feed.held is not None:
                    # Subscribed again after a reconnect: from here on nothing is missed;
                    # what was announced before is read from the log.
                    task = asyncio.create_task(self._repair(feed, feed.gen), name="hub-repair")
                    self._repairs.add(task)
                    task.add_done_callback(self._repairs.discard)
        for feed, payloads in pending.items():
            self.deliver(feed, payloads)

    def deliver(self, feed: Feed, payloads: list[bytes]) -> None:
        """Fan announced events out to the feed's live subscribers, encoded once each."""
        announced: list[Announcement] = []
        for payload in payloads:
            try:
                announced.append(decode(payload))
            except ValueError:
                # Anyone who can PUBLISH reaches this channel: drop what is not ours
                # rather than let it reset the pod's connection (and every stream on it).
                log.warning(
                    "dropped a malformed announcement on %s (%d bytes)",
                    feed.channel.decode(errors="replace"),
                    len(payload),
                )
        self.deliver_events(feed, announced)

    def deliver_events(self, feed: Feed, announced: list[Announcement]) -> None:
        """Fan events (announced, or read from the log by a repair) out, encoded once each."""
        if any(a.name == EPOCH_EVENT for a in announced):
            self._log_moved(feed)
            return
        id_prefix = feed.id_prefix
        if id_prefix is None:
            # The log was just created: its waiting streams now read it from the store.
            if not feed.appeared.done():
                feed.appeared.set_result(None)
            return
        events: list[tuple[int, int, bytes, bytes, bool]] = []
        decoded = [(a.n, a.name, a.data) for a in announced] if feed.taps else []
        for n, t, name, data in announced:
            if n <= feed.last_n:
                if n == 1:
                    # The log was lost and re-created: these clients' cursors belong to the
                    # old incarnation; they reconnect and get a gap event.
                    for sub in list(feed.subscribers):
                        sub.finish(RESYNC)
                continue
            feed.last_n = n
            event = encode_event(name, id_prefix + b"%010d" % n, data)
            is_terminal = name == b"terminal"
            self.frames.put(feed.run_id, feed.epoch, n, event, is_terminal)
            events.append((n, t, event, chunk(event), is_terminal))
        for tap in list(feed.taps):
            tap(decoded)
        if not events:
            return
        sent = 0  # counted once per burst, not per client event
        for sub in feed.subscribers:
            if sub.finished:
                continue
            last = sub.last_n
            min_t = sub.min_t
            chunked = sub.chunked
            parts: list[bytes] = []
            ending = ""
            for n, t, frame, framed, is_terminal in events:
                if n <= last:
                    continue
                if n != last + 1:
                    # A live message went missing: this client cannot be served in order
                    # from here, so it resumes by cursor from the log instead.
                    ending = RESYNC
                    break
                last = n
                if min_t is None or t > min_t:
                    parts.append(framed if chunked else frame)
                if is_terminal:
                    ending = TERMINAL
                    break
            if parts:
                sub.send(parts[0] if len(parts) == 1 else b"".join(parts))
                sent += len(parts)
            sub.last_n = last
            if ending:
                sub.finish(ending)
        metrics.count_delivered(sent)

    async def _read_forever(self) -> None:
        backoff = 0.1
        lost_since = time.monotonic()
        while not self._stopping:
            try:
                await self._read_until_lost()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                if self._stopping:
                    return
                if self._connected.is_set():
                    log.warning(
                        "live connection to the store lost (%s); reconnecting, streams stay open",
                        type(exc).__name__,
                    )
            now = time.monotonic()
            if self._connected.is_set():
                backoff = 0.1  # it had been up: retry promptly
                metrics.count_reconnect()
                lost_since = now
            elif now - lost_since > LIVE_GIVE_UP_S and self._all:
                # Down too long to be a restart or a failover: let the clients resume by
                # cursor (perhaps on a pod that can hear the store) instead of waiting here.
                log.warning(
                    "live connection down for over %d s; ending this pod's streams",
                    LIVE_GIVE_UP_S,
                )
                self.end_all(STORE_LOST)
                lost_since = now
            self._connected.clear()
            self._live = None
            # Streams stay open. Announcements made while we are away are not coming back
            # on the channel: each feed is repaired from the log once subscribed again.
            for feed in list(self._feeds.values()):
                if not feed.ready.done():
                    feed.ready.set_exception(RedisConnectionError("live connection lost"))
                    feed.ready.exception()  # its waiter, if any, sees it; no "never retrieved"
                else:
                    feed.held = []
                    feed.gen += 1
                # Taps (run logs read as Durable Streams) end: their clients resume by offset.
                for tap in list(feed.taps):
                    tap(None)
            extras, self._extra = self._extra, {}
            for extra in extras.values():
                if not extra.ready.done():
                    extra.ready.set_exception(RedisConnectionError("live connection lost"))
                    extra.ready.exception()
                extra.sink(None)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _open_live(self) -> LiveConnection:
        """Connect to the configured node, else (on a cluster) to the first other that answers."""
        urls = self._node_urls() if self._node_urls is not None else [self._url]
        failure: Exception = RedisConnectionError("no node to connect to")
        for url in urls:
            try:
                return await LiveConnection.open(url, self.on_messages)
            except (RedisError, OSError) as exc:
                failure = exc
        raise failure

    async def _read_until_lost(self) -> None:
        live = await self._open_live()
        self._live = live
        waiting = [
            feed.channel
            for feed in self._feeds.values()
            if feed.ready.done() and feed.ready.exception() is None
        ]
        if waiting:
            live.subscribe(*waiting)
        self._connected.set()
        reason = await live.wait_closed()
        raise RedisConnectionError("live connection closed") from reason

    async def _repair(self, feed: Feed, gen: int) -> None:
        """Deliver what ``feed`` missed while disconnected (from the log), then what it held."""
        for attempt in range(REPAIR_ATTEMPTS):
            try:
                await self._read_missed(feed)
                break
            except (RedisError, OSError) as exc:
                if feed.gen != gen:
                    return  # lost again meanwhile: the next reconnect repairs it
                if attempt + 1 < REPAIR_ATTEMPTS:
                    # Pooled connections from before the outage fail once, then are replaced.
                    await asyncio.sleep(0.1 * 2**attempt)
                    continue
                log.warning("could not repair a feed from the log (%s)", type(exc).__name__)
                # Its clients resume by cursor from the log themselves.
                for sub in list(feed.subscribers):
                    sub.finish(STORE_LOST)
        if feed.gen != gen or feed.lost:
            return  # lost again meanwhile: the next reconnect's repair hands over
        held, feed.held = feed.held, None
        if held:
            self.deliver(feed, held)

    async def _read_missed(self, feed: Feed) -> None:
        start = feed.last_n
        if feed.subscribers:
            start = max(start, min(sub.last_n for sub in feed.subscribers))
        state = await self._reader.state(feed.run_id)
        if feed.id_prefix is None:
            # A log nobody had seen yet (a tenant feed before its first run): if it was
            # created meanwhile, its waiting streams now read it from the store.
            if state is not None:
                feed.know(state.id_prefix)
            return
        if state is None or state.epoch != feed.epoch:
            # The log was lost (and perhaps re-created) meanwhile: these cursors belong to
            # the old one; the clients reconnect and get a gap event (or a 404).
            feed.lost = True
            feed.held = None
            for sub in list(feed.subscribers):
                sub.finish(RESYNC)
            self._drop_feed(feed)
            return
        after = start
        while True:
            entries = await self._reader.after(feed.run_id, after, REPAIR_BATCH)
            if not entries:
                return
            after = entries[-1].n
            self.deliver_events(feed, [Announcement(e.n, e.t, e.name, e.data) for e in entries])
            if len(entries) < REPAIR_BATCH:
                return

    # -- the ticker ------------------------------------------------------------------

    async def _tick_forever(self) -> None:
        tick = min(1.0, self._heartbeat_s / 2, self._stream_max_s / 10)
        next_ping = time.monotonic() + self._heartbeat_s
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            self._expire(now)
            ping_due = now >= next_ping
            if ping_due:
                next_ping = now + self._heartbeat_s
                self._ping_all()
            self._check_live(now, ping_due)

    def _forget_deadline(self) -> None:
        # An ended stream's deadline would otherwise stay in the heap until its soft limit
        # (10 minutes of memory per reconnect). Once most of the heap is ended streams it
        # is rebuilt without them: linear, and amortised over the releases that led to it.
        heap = self._deadlines
        if len(heap) > 2 * len(self._all) + 64:
            self._deadlines = [item for item in heap if not item[2].finished]
            heapq.heapify(self._deadlines)

    def _expire(self, now: float) -> None:
        heap = self._deadlines
        while heap and (heap[0][0] <= now or heap[0][2].finished):
            _, _, sub = heapq.heappop(heap)
            sub.finish(SOFT_LIMIT)

    def _ping_all(self) -> None:
        for sub in list(self._all):
            if not sub.finished:
                sub.send(PING_CHUNK if sub.chunked else PING)

    def _check_live(self, now: float, ping_due: bool) -> None:
        """PING the pub/sub connection each heartbeat; one that leaves a PING unanswered
        for ``PONG_TIMEOUT_S`` (or a heartbeat, if shorter) is dead: drop it, reconnect."""
        live = self._live
        if live is None or not self._connected.is_set():
            return
        sent_at = live.ping_sent_at
        if sent_at is not None and now - sent_at > min(PONG_TIMEOUT_S, self._heartbeat_s):
            log.warning("live connection left a PING unanswered; reconnecting")
            live.abort()
            return
        if ping_due:
            with contextlib.suppress(RedisConnectionError):  # closing: the reader reconnects
                live.ping(now)
