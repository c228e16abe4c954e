"""Client settings, validated once and shared by the sync and async clients."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from .errors import ConfigurationError

TOKEN_HEADER = "X-Mantis-Token"
DEFAULT_IDLE_TIMEOUT_S = 75.0
DEFAULT_CONNECT_TIMEOUT_S = 10.0

ENV_ENDPOINT = "MANTIS_ENDPOINT"
ENV_TOKEN = "MANTIS_API_TOKEN"
ENV_IDLE_TIMEOUT = "MANTIS_IDLE_TIMEOUT_S"


@dataclass(frozen=True)
class ClientSettings:
    """Where to connect, how to authenticate, and how long to wait."""

    endpoint: str
    # repr=False: a settings object printed in a traceback or a log must not show it.
    token: str = field(repr=False)
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S

    def __post_init__(self) -> None:
        url = httpx.URL(self.endpoint) if self.endpoint else None
        if url is None or url.scheme not in ("http", "https") or not url.host:
            raise ConfigurationError(
                f"endpoint must be an http(s) URL such as http://127.0.0.1:8080, "
                f"got {self.endpoint!r}"
            )
        # Checked here because httpx would otherwise reject the header with an error
        # message that quotes the header value, i.e. the token.
        if not self.token or not (self.token.isascii() and self.token.isprintable()):
            raise ConfigurationError("token must be non-empty printable ASCII")
        for name in ("idle_timeout_s", "connect_timeout_s"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ConfigurationError(f"{name} must be a positive number, got {value!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ClientSettings:
        """Read MANTIS_ENDPOINT, MANTIS_API_TOKEN and optional MANTIS_IDLE_TIMEOUT_S."""
        env = os.environ if environ is None else environ
        endpoint = _required(env, ENV_ENDPOINT)
        token = _required(env, ENV_TOKEN)
        idle = env.get(ENV_IDLE_TIMEOUT, "").strip()
        idle_timeout_s = DEFAULT_IDLE_TIMEOUT_S
        if idle:
            try:
                idle_timeout_s = float(idle)
            except ValueError:
                raise ConfigurationError(
                    f"{ENV_IDLE_TIMEOUT} must be a number of seconds, got {idle!r}"
                ) from None
        return cls(endpoint, token, idle_timeout_s=idle_timeout_s)

    @property
    def display_endpoint(self) -> str:
        """The endpoint without any user:password part, for messages and reprs."""
        return str(httpx.URL(self.endpoint).copy_with(username=None, password=None))

    def events_url(self, run_id: str) -> str:
        """URL of a run's event stream; the run id is quoted so it stays one path segment."""
        return f"{self.endpoint.rstrip('/')}/v1/runs/{quote(run_id, safe='')}/events"

    def api_url(self, path: str) -> str:
        """URL of an API path (``/v1/...``) on the endpoint."""
        return f"{self.endpoint.rstrip('/')}{path}"

    def run_url(self, run_id: str, suffix: str = "") -> str:
        """URL of ``/v1/runs/{run_id}`` (plus ``suffix``), the run id quoted as one segment."""
        return self.api_url(f"/v1/runs/{quote(run_id, safe='')}{suffix}")

    def api_request(self, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Keyword arguments for one plain (not streaming) API request."""
        return {
            "headers": {TOKEN_HEADER: self.token, **(headers or {})},
            "timeout": httpx.Timeout(self.connect_timeout_s, read=self.idle_timeout_s),
        }

    def stream_request(self, since: str) -> dict[str, Any]:
        """Keyword arguments for `connect_sse` (which adds the Accept header itself)."""
        return {
            "params": {"since": since} if since else None,
            "headers": {TOKEN_HEADER: self.token},
            # The read timeout bounds the silence between two reads of the socket, so
            # the server's pings keep a quiet stream open and a hung one ends.
            "timeout": httpx.Timeout(
                self.connect_timeout_s,
                read=self.idle_timeout_s,
            ),
        }

    def describe(self, class_name: str) -> str:
        """The repr of a client holding these settings."""
        return (
            f"{class_name}(endpoint={self.display_endpoint!r}, "
            f"idle_timeout_s={self.idle_timeout_s!r})"
        )


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise ConfigurationError(f"environment variable {name} is not set")
    return value
