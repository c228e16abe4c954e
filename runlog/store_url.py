"""Which Redis the bridge talks to: MANTIS_REDIS_URL, else the embedded store of this machine.

The service started without MANTIS_REDIS_URL serves an embedded, in-memory store on a
loopback port and writes its URL to a discovery file; a runner in another terminal finds
it there, so ``python -m runner_bridge`` reaches the same store with no set-up.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import StoreNotConfigured


def state_dir() -> Path:
    """Folder of the embedded store's discovery file (``MANTIS_STATE_DIR`` overrides)."""
    configured = os.environ.get("MANTIS_STATE_DIR")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_RUNTIME_DIR") or Path.home() / ".cache") / "mantis"


def embedded_url_file() -> Path:
    """Where a running embedded store writes its ``redis://`` URL."""
    return state_dir() / "embedded-store.url"


def resolve_redis_url(explicit: str | None = None) -> str:
    """The URL to use: the explicit one, else MANTIS_REDIS_URL, else the embedded store's."""
    url = explicit or os.environ.get("MANTIS_REDIS_URL")
    if url:
        return url
    path = embedded_url_file()
    try:
        found = path.read_text().strip()
    except FileNotFoundError:
        raise StoreNotConfigured(
            "MANTIS_REDIS_URL is not set and no embedded store is running on this machine "
            f"({path} is absent): start the service with `make run`, or set MANTIS_REDIS_URL"
        ) from None
    if not found.startswith("redis://"):
        raise StoreNotConfigured(f"{path} does not hold a redis:// URL")
    return found


def redact_url(url: str) -> str:
    """The URL with any password replaced, fit for a log line."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    _creds, _, host = rest.rpartition("@")
    return f"{scheme}://***@{host}"
