"""Tenant tokens: parsed from MANTIS_TENANT_TOKENS, checked in constant time.

Only SHA-256 digests are kept in memory, so a token given as ``sha256:<hex>`` is never
held in clear, and a presented token is compared against every tenant's digest with
``hmac.compare_digest`` (no early exit that would leak which tenant or prefix matched).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from runlog.records import TENANT_RE

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


class TokenConfigError(ValueError):
    """MANTIS_TENANT_TOKENS is malformed; the message names the entry, never the token."""


def digest(token: str) -> bytes:
    """The SHA-256 digest that stands for a token."""
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class TokenTable:
    """Tenant name by token digest."""

    entries: tuple[tuple[str, bytes], ...]

    @classmethod
    def parse(cls, spec: str) -> TokenTable:
        """Read ``tenant=token,tenant2=sha256:<hex>,...``."""
        entries: list[tuple[str, bytes]] = []
        for position, part in enumerate(spec.split(","), start=1):
            part = part.strip()
            if not part:
                continue
            tenant, sep, token = part.partition("=")
            tenant, token = tenant.strip(), token.strip()
            if not sep or not tenant or not token:
                raise TokenConfigError(
                    f"MANTIS_TENANT_TOKENS entry {position} must look like tenant=token"
                )
            if TENANT_RE.fullmatch(tenant) is None:
                raise TokenConfigError(
                    f"MANTIS_TENANT_TOKENS entry {position}: a tenant name must match "
                    "[A-Za-z0-9_.-]{1,64}"
                )
            if token.startswith("sha256:"):
                hexpart = token[len("sha256:") :]
                if not _HEX64.fullmatch(hexpart):
                    raise TokenConfigError(
                        f"MANTIS_TENANT_TOKENS entry {position} ({tenant}): sha256: must be "
                        "followed by 64 hex digits"
                    )
                entries.append((tenant, bytes.fromhex(hexpart)))
            else:
                entries.append((tenant, digest(token)))
        if not entries:
            raise TokenConfigError("MANTIS_TENANT_TOKENS names no tenant")
        return cls(tuple(entries))

    @classmethod
    def dev(cls) -> tuple[TokenTable, str]:
        """A single ``dev`` tenant with a fresh random token (returned once, to print)."""
        token = secrets.token_urlsafe(24)
        return cls((("dev", digest(token)),)), token

    def tenant_for(self, token: str | None) -> str | None:
        """The tenant this token belongs to, or None; time does not depend on which."""
        if not token:
            return None
        presented = digest(token)
        found: str | None = None
        for tenant, expected in self.entries:
            if hmac.compare_digest(presented, expected) and found is None:
                found = tenant
        return found
