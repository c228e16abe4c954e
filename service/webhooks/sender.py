"""One attempt of one delivery: sign, POST, read a bounded answer, say what happened.

The outbound client is one aiohttp session per pod: pooled keep-alive connections, a
bound on connections in all and per host, a 10 s limit per attempt, no redirects followed,
no proxies or cookies, and the guarded resolver on every new connection.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
from aiohttp.abc import AbstractResolver
from standardwebhooks import Webhook
from yarl import URL

from .guard import AddressPolicy, BlockedAddress, GuardedResolver
from .model import payload
from .store import Claim

ATTEMPT_TIMEOUT_S = 10.0
ANSWER_READ_LIMIT = 4096
USER_AGENT = "Mantis-Webhooks/1"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt got: a status code, or an error that names no secret and no URL."""

    at_ms: int
    duration_ms: int
    status_code: int | None = None
    error: str | None = None

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


@functools.lru_cache(maxsize=4096)
def _signer(secret: str) -> Webhook:
    return Webhook(secret)


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,<base64 HMAC-SHA256("{id}.{ts}.{body}")>``."""
    return _signer(secret).sign(message_id, datetime.fromtimestamp(timestamp, tz=UTC),
                                body.decode())


def headers_for(claim: Claim, body: bytes, timestamp: int) -> dict[str, str]:
    """The Standard Webhooks headers; the id is the delivery's, the same on every retry."""
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "webhook-id": claim.delivery_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(claim.endpoint.secret, claim.delivery_id, timestamp, body),
    }


def _describe(exc: BaseException, timeout_s: float) -> str:
    # Messages of our own making only: an exception's text may quote the URL.
    if isinstance(exc, BlockedAddress):
        return "blocked: the endpoint's address is not public"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        if isinstance(exc.os_error, BlockedAddress):
            return "blocked: the endpoint's host resolves to an address that is not public"
        return "dns: the endpoint's host does not resolve"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        return "tls: the endpoint's certificate or handshake was refused"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"connect: {exc.os_error.strerror or type(exc.os_error).__name__}"
    if isinstance(exc, TimeoutError):
        return f"timeout: no answer within {timeout_s:g} s"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "disconnected: the endpoint closed the connection"
    return f"error: {type(exc).__name__}"


class Sender:
    """Sends attempts over one pooled, guarded aiohttp session (made in ``open``)."""

    def __init__(
        self,
        policy: AddressPolicy,
        *,
        limit: int,
        resolver_factory: Callable[[], AbstractResolver] = aiohttp.ThreadedResolver,
        timeout_s: float = ATTEMPT_TIMEOUT_S,
    ) -> None:
        self._policy = policy
        self._limit = limit
        self._resolver_factory = resolver_factory
        self._timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        # No per-host bound here: the dispatcher bounds requests per endpoint, and two
        # endpoints on one host must not wait on each other's slow answers.
        connector = aiohttp.TCPConnector(
            limit=self._limit,
            resolver=GuardedResolver(self._resolver_factory(), self._policy),
            ttl_dns_cache=10,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self._timeout_s),
            trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def attempt(self, claim: Claim) -> Outcome:
        """POST the delivery once; never raises for anything the endpoint does."""
        session = self._session
        if session is None:
            raise RuntimeError("Sender.open() was not awaited")
        at_ms = int(time.time() * 1000)
        started = time.monotonic()
        status: int | None = None
        error: str | None = None
        try:
            url = URL(claim.endpoint.url)
            self._policy.check_literal(url.raw_host or "")
            body = payload(claim.event_type, claim.t_us, claim.data)
            headers = headers_for(claim, body, int(time.time()))
            async with session.post(
                url, data=body, headers=headers, allow_redirects=False
            ) as response:
                await _read_bounded(response)
                status = response.status
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            error = _describe(exc, self._timeout_s)
        duration_ms = int((time.monotonic() - started) * 1000)
        if status is not None and 300 <= status < 400:
            error = "redirect: not followed"
        return Outcome(at_ms=at_ms, duration_ms=duration_ms, status_code=status, error=error)


async def _read_bounded(response: aiohttp.ClientResponse) -> None:
    # Reading a small answer to its end lets the connection be reused; a larger one is
    # left unread and its connection closed: nothing the endpoint sends is kept.
    remaining = ANSWER_READ_LIMIT
    while remaining > 0:
        chunk = await response.content.read(remaining)
        if not chunk:
            return
        remaining -= len(chunk)
