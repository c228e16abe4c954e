"""Stream tickets: short-lived, scoped, read-only credentials a browser can put in a URL.

A browser's ``EventSource`` cannot send headers, so a dashboard's backend (which holds the
tenant token) asks ``POST /v1/runs/{run_id}/tickets`` for a ticket and hands the page
``/v1/runs/{run_id}/events?ticket=...``. A ticket is stateless, so any pod verifies it:

    v1.<base64url(JSON [tenant, issued_ms, expires_ms])>.<base64url(HMAC-SHA256)>

The MAC covers the version, the payload and the ticket's scope: the run id (which the URL
carries, so the ticket does not repeat it), or ``FEED_SCOPE`` for a ticket to the tenant's
feed (``POST /v1/events/tickets``, read as ``/v1/events?ticket=...``). No run id contains a
``:``, so the two kinds can never stand for each other. The key is derived from
``MANTIS_TICKET_SECRET``, which every pod of a deployment shares. Without it (allowed on
loopback only) the key is random, made per process: tickets then work on that one process
until it restarts. The key is never derived from the tenant tokens: anyone who learnt a
token digest (a config file, a ``sha256:`` value in a ticket, a log) could then mint
tickets for every tenant.

Lifetime: a *fresh* connection needs an unexpired ticket (``MANTIS_TICKET_TTL_S``). An
``EventSource`` reconnects with the same URL, adding ``Last-Event-ID``; such a resuming
stream is accepted until ``MANTIS_TICKET_MAX_LIFE_S`` after issue, so a long run is not
cut off when its page's ticket ages out mid-run. That grace is bound to what the client
really received (``Grant.grace_since_ms``, checked by the events endpoint): its cursor must
be up to date as of the ticket's expiry, so a leaked expired ticket with a forged cursor
reads nothing written before it expired.

Pure: no I/O, the clock is a parameter.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    from .auth import TokenTable
    from .settings import Settings

log = logging.getLogger("mantis.tickets")

VERSION = "v1"
_KEY_LABEL = b"mantis-ticket-key-v1\0"
# The scope of a feed ticket: not a possible run id (run ids have no ':'), so a feed ticket
# opens no run and a run ticket does not open the feed.
FEED_SCOPE = ":feed"


@dataclass(frozen=True, slots=True)
class Grant:
    """A verified ticket: its tenant and, when it is past its expiry and only a resuming
    stream's grace admits it, that expiry (ms): the stream's cursor must then be up to date
    as of it (no event at or before it may lie after the cursor)."""

    tenant: str
    grace_since_ms: int | None = None


class InvalidTicket(ValueError):
    """The ticket is malformed, forged, for another run, or unknown to this deployment."""


class ExpiredTicket(InvalidTicket):
    """The ticket was genuine but its lifetime for this kind of request is over."""


@dataclass(frozen=True, slots=True)
class Ticket:
    """An issued ticket: the opaque string and when it stops opening fresh streams.

    ``run_id`` is None for a ticket to the tenant's feed.
    """

    token: str = field(repr=False)
    run_id: str | None
    tenant: str
    expires_at: float

    def expires_at_iso(self) -> str:
        """``expires_at`` as UTC ISO-8601 with milliseconds and ``Z``."""
        moment = datetime.fromtimestamp(self.expires_at, tz=UTC)
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def derive_key(secret: str) -> bytes:
    """The MAC key from the deployment's shared ``MANTIS_TICKET_SECRET``."""
    if not secret:
        raise ValueError("a ticket secret must not be empty")
    return hashlib.sha256(_KEY_LABEL + b"secret\0" + secret.encode()).digest()


def process_key() -> bytes:
    """A random key for this process alone (no MANTIS_TICKET_SECRET, loopback only)."""
    return secrets.token_bytes(32)


class TicketBook:
    """Issues and verifies tickets with one key; every pod with the same key agrees."""

    def __init__(
        self,
        key: bytes,
        *,
        tenants: Iterable[str],
        ttl_s: float,
        max_life_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = key
        self._tenants = frozenset(tenants)
        self.ttl_s = ttl_s
        self.max_life_s = max(max_life_s, ttl_s)
        self._clock = clock

    def __repr__(self) -> str:
        return f"TicketBook(ttl_s={self.ttl_s}, max_life_s={self.max_life_s})"

    def _mac(self, payload: str, scope: str) -> bytes:
        message = f"{VERSION}.{payload}.{scope}".encode()
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def _issue(self, tenant: str, scope: str, now: float | None) -> tuple[str, float]:
        issued_ms = int((self._clock() if now is None else now) * 1000)
        expires_ms = issued_ms + max(1, int(self.ttl_s * 1000))
        payload = _b64(orjson.dumps([tenant, issued_ms, expires_ms]))
        return f"{VERSION}.{payload}.{_b64(self._mac(payload, scope))}", expires_ms / 1000

    def issue(self, tenant: str, run_id: str, *, now: float | None = None) -> Ticket:
        """A ticket for ``tenant`` to read ``run_id``'s events, valid for ``ttl_s``."""
        token, expires_at = self._issue(tenant, run_id, now)
        return Ticket(token=token, run_id=run_id, tenant=tenant, expires_at=expires_at)

    def issue_feed(self, tenant: str, *, now: float | None = None) -> Ticket:
        """A ticket for ``tenant`` to read its own feed (``/v1/events``), valid for ``ttl_s``."""
        token, expires_at = self._issue(tenant, FEED_SCOPE, now)
        return Ticket(token=token, run_id=None, tenant=tenant, expires_at=expires_at)

    def verify(
        self, token: str, run_id: str, *, resuming: bool = False, now: float | None = None
    ) -> str:
        """The tenant a genuine ticket for ``run_id`` speaks for.

        ``resuming`` (a stream reconnecting with ``Last-Event-ID``) extends the lifetime
        to ``max_life_s`` after issue. Raises ``InvalidTicket`` or ``ExpiredTicket``.
        """
        return self.grant(token, run_id, resuming=resuming, now=now).tenant

    def verify_feed(self, token: str, *, resuming: bool = False, now: float | None = None) -> str:
        """The tenant whose feed a genuine feed ticket opens (lifetimes as ``verify``)."""
        return self.grant(token, FEED_SCOPE, resuming=resuming, now=now).tenant

    def grant(
        self, token: str, scope: str, *, resuming: bool = False, now: float | None = None
    ) -> Grant:
        """What a genuine ticket for ``scope`` (a run id, or ``FEED_SCOPE``) allows now."""
        return self._verify(token, scope, resuming, now)

    def _verify(self, token: str, scope: str, resuming: bool, now: float | None) -> Grant:
        version, _, rest = token.partition(".")
        payload, _, mac_text = rest.partition(".")
        if version != VERSION or not payload or not mac_text or len(token) > 1024:
            raise InvalidTicket("malformed ticket")
        try:
            presented = _unb64(mac_text)
        except (binascii.Error, ValueError):
            raise InvalidTicket("malformed ticket") from None
        # Check the MAC before reading anything the holder wrote.
        if not hmac.compare_digest(presented, self._mac(payload, scope)):
            raise InvalidTicket("ticket not valid here")
        try:
            tenant, issued_ms, expires_ms = orjson.loads(_unb64(payload))
        except (binascii.Error, ValueError, TypeError):
            raise InvalidTicket("malformed ticket") from None
        if (
            not isinstance(tenant, str)
            or not isinstance(issued_ms, int)
            or not isinstance(expires_ms, int)
            or tenant not in self._tenants
        ):
            raise InvalidTicket("ticket not valid for this deployment")
        now_ms = (self._clock() if now is None else now) * 1000
        if now_ms < expires_ms:
            return Grant(tenant)
        if resuming and now_ms < issued_ms + self.max_life_s * 1000:
            return Grant(tenant, grace_since_ms=expires_ms)
        raise ExpiredTicket("ticket expired")


def ticket_book(settings: Settings, tokens: TokenTable) -> TicketBook:
    """The deployment's book: keyed by MANTIS_TICKET_SECRET, else by a random process key."""
    if settings.ticket_secret:
        key = derive_key(settings.ticket_secret)
    else:
        key = process_key()
        log.warning(
            "MANTIS_TICKET_SECRET is not set: tickets are signed with a random key of this "
            "process and will not verify on another pod or after a restart"
        )
    return TicketBook(
        key,
        tenants=(tenant for tenant, _ in tokens.entries),
        ttl_s=settings.ticket_ttl_s,
        max_life_s=settings.ticket_max_life_s,
    )
