"""The pod's one pub/sub connection, read with hiredis straight from the socket.

redis-py's PubSub costs a coroutine, a retry wrapper and a timeout per message; under load
that was the hub's largest cost. Here an asyncio protocol feeds every received chunk to a
hiredis reader and hands all the messages it holds to the hub in one call, so a burst of
announcements costs one wake-up and lets the hub write each client once per burst.
Commands are packed by hand: SUBSCRIBE, UNSUBSCRIBE, PING and AUTH are all it sends. The
PING (every heartbeat) is what tells a half-open socket from a quiet one: TCP keepalive
alone takes minutes.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from typing import Any

import hiredis
from redis.connection import parse_url
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError

CONNECT_TIMEOUT_S = 2.0
Message = list[Any]
OnMessages = Callable[[list[Message]], None]

_KEEPALIVE = (
    (getattr(socket, "TCP_KEEPIDLE", None), 30),
    (getattr(socket, "TCP_KEEPINTVL", None), 10),
    (getattr(socket, "TCP_KEEPCNT", None), 3),
)


def pack(*args: bytes | str) -> bytes:
    """One RESP command."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        raw = arg.encode() if isinstance(arg, str) else arg
        parts.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(parts)


class _Protocol(asyncio.Protocol):
    def __init__(self, on_messages: OnMessages) -> None:
        self._on_messages = on_messages
        self._reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self.auth_reply: asyncio.Future[Any] | None = None
        # When the PING now outstanding was sent (monotonic), None when none is.
        self.ping_sent_at: float | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        batch: list[Message] = []
        while (reply := reader.gets()) is not False:
            if self.auth_reply is not None and not self.auth_reply.done():
                self.auth_reply.set_result(reply)
                continue
            if isinstance(reply, list):
                if reply and reply[0] == b"pong":
                    self.ping_sent_at = None
                    continue
                batch.append(reply)
            elif reply == b"PONG":
                # With no channel subscribed, Redis answers PING as it does outside pub/sub.
                self.ping_sent_at = None
            elif isinstance(reply, hiredis.ReplyError):
                self._fail(RedisConnectionError(f"pub/sub connection refused: {reply}"))
                return
        if batch:
            self._on_messages(batch)

    def _fail(self, exc: Exception) -> None:
        if not self.closed.done():
            self.closed.set_result(exc)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(exc or RedisConnectionError("pub/sub connection closed"))


class LiveConnection:
    """A connected pub/sub socket: ``subscribe``, ``unsubscribe``, ``wait_closed``."""

    def __init__(self, protocol: _Protocol) -> None:
        self._protocol = protocol

    @classmethod
    async def open(cls, url: str, on_messages: OnMessages) -> LiveConnection:
        """Connect (and authenticate) to the node ``url`` names; raises redis's errors."""
        params: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
        host = str(params.get("host", "127.0.0.1"))
        port = int(params.get("port", 6379))
        context: ssl.SSLContext | None = None
        if url.startswith("rediss://"):
            context = ssl.create_default_context()
        loop = asyncio.get_running_loop()
        try:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for drops a cancellation that
            # arrives as the connection completes, and the hub's stop() then waits forever
            # on a connection nobody closes.
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                _transport, protocol = await loop.create_connection(
                    lambda: _Protocol(on_messages), host, port, ssl=context
                )
        except (OSError, TimeoutError) as exc:
            raise RedisConnectionError(f"cannot reach the store at {host}:{port}") from exc
        sock = protocol.transport.get_extra_info("socket") if protocol.transport else None
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for option, value in _KEEPALIVE:
                if option is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, option, value)
        connection = cls(protocol)
        password = params.get("password")
        if password:
            await connection._authenticate(params.get("username"), str(password))
        return connection

    async def _authenticate(self, username: str | None, password: str) -> None:
        protocol = self._protocol
        protocol.auth_reply = asyncio.get_running_loop().create_future()
        args = ("AUTH", username, password) if username else ("AUTH", password)
        self._send(pack(*args))
        async with asyncio.timeout(CONNECT_TIMEOUT_S):  # not wait_for: see open()
            reply = await asyncio.shield(protocol.auth_reply)
        if isinstance(reply, hiredis.ReplyError):
            self.close()
            # The reply names no secret; the password is never part of the message.
            raise AuthenticationError("the store refused the pub/sub credentials")

    def _send(self, data: bytes) -> None:
        transport = self._protocol.transport
        if transport is None or transport.is_closing():
            raise RedisConnectionError("pub/sub connection closed")
        transport.write(data)

    def subscribe(self, *channels: bytes) -> None:
        """Ask for channels; Redis confirms each with a ``subscribe`` message."""
        self._send(pack("SUBSCRIBE", *channels))

    def unsubscribe(self, *channels: bytes) -> None:
        self._send(pack("UNSUBSCRIBE", *channels))

    def ping(self, now: float) -> None:
        """Send a PING (``now``: the monotonic time), unless one is still unanswered."""
        if self._protocol.ping_sent_at is None:
            self._send(pack("PING"))
            self._protocol.ping_sent_at = now

    @property
    def ping_sent_at(self) -> float | None:
        """When the unanswered PING was sent; None when every PING has been answered."""
        return self._protocol.ping_sent_at

    def abort(self) -> None:
        """Drop the connection now (no goodbye: the peer may not be there to hear it)."""
        transport = self._protocol.transport
        if transport is not None:
            transport.abort()

    async def wait_closed(self) -> Exception | None:
        """Wait until the connection is lost; returns why."""
        return await asyncio.shield(self._protocol.closed)

    def close(self) -> None:
        transport = self._protocol.transport
        if transport is not None:
            transport.close()
