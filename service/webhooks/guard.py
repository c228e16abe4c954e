"""Where webhooks may go: ``https://`` to public addresses only (the SSRF guard).

A URL is checked when it is registered (its host resolved) and again on every connection:
``GuardedResolver`` sits between aiohttp and the system resolver, so a name whose DNS
answer changes after registration (DNS rebinding) still cannot reach an internal address.
An IP literal never reaches a resolver, so ``check_literal`` is also called before each
request.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cloud metadata services; link-local or private already, named so a reader sees them.
METADATA_ADDRESSES = frozenset(
    {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
)
MAX_URL_LENGTH = 2048


class BlockedAddress(OSError):
    """A webhook host resolved to an address webhooks may not reach.

    An ``OSError`` so that aiohttp reports it as a failed connection (the attempt fails and
    is retried) instead of crashing the dispatcher.
    """


class InvalidWebhookUrl(ValueError):
    """The URL cannot be an endpoint; the message says why (never echoes the URL)."""


@dataclass(frozen=True)
class AddressPolicy:
    """What ``MANTIS_WEBHOOK_ALLOW_PRIVATE`` and ``MANTIS_WEBHOOK_ALLOW_HTTP`` lift."""

    allow_private: bool = False
    allow_http: bool = False

    def blocked(self, address: str) -> bool:
        """True if webhooks may not connect to ``address`` (an IP address string)."""
        if self.allow_private:
            return False
        try:
            ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return True
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return (
            ip in METADATA_ADDRESSES
            or ip.is_loopback
            or ip.is_private
            or ip.is_link_local
            or ip.is_multicast
            or ip.is_reserved
            or ip.is_unspecified
            or not ip.is_global
        )

    def parse(self, raw: str) -> URL:
        """The URL if its form is acceptable (scheme, host, no credentials), else raise."""
        if len(raw) > MAX_URL_LENGTH:
            raise InvalidWebhookUrl(f"url: at most {MAX_URL_LENGTH} characters")
        try:
            url = URL(raw)
        except (ValueError, TypeError):
            raise InvalidWebhookUrl("url: not a valid URL") from None
        allowed = ("https", "http") if self.allow_http else ("https",)
        if url.scheme not in allowed:
            raise InvalidWebhookUrl("url: must start with https://")
        if not url.host:
            raise InvalidWebhookUrl("url: has no host")
        if url.user is not None or url.password is not None:
            # Credentials in a URL end up in logs and proxies; use the signature instead.
            raise InvalidWebhookUrl("url: must not carry a user name or password")
        try:
            _ = url.port
        except ValueError:
            raise InvalidWebhookUrl("url: bad port") from None
        return url

    def check_literal(self, host: str) -> None:
        """Raise ``BlockedAddress`` if ``host`` is an IP literal webhooks may not reach."""
        if _is_ip(host) and self.blocked(host):
            raise BlockedAddress("the endpoint's address is not public")

    async def check_url(self, raw: str, resolver: AbstractResolver) -> URL:
        """Parse and resolve ``raw`` now; every address it resolves to must be allowed."""
        url = self.parse(raw)
        host = url.raw_host or ""
        if _is_ip(host):
            if self.blocked(host):
                raise InvalidWebhookUrl("url: its address is not public")
            return url
        try:
            infos = await resolver.resolve(host, url.port or 443, socket.AF_UNSPEC)
        except OSError:
            raise InvalidWebhookUrl("url: its host does not resolve") from None
        if not infos:
            raise InvalidWebhookUrl("url: its host does not resolve")
        if any(self.blocked(info["host"]) for info in infos):
            raise InvalidWebhookUrl("url: its host resolves to an address that is not public")
        return url


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    return True


class GuardedResolver(AbstractResolver):
    """Resolves through ``inner`` and refuses the whole answer if any address is blocked."""

    def __init__(self, inner: AbstractResolver, policy: AddressPolicy) -> None:
        self._inner = inner
        self._policy = policy

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        infos = await self._inner.resolve(host, port, family)
        if any(self._policy.blocked(info["host"]) for info in infos):
            raise BlockedAddress("the endpoint's host resolves to an address that is not public")
        return infos

    async def close(self) -> None:
        await self._inner.close()
