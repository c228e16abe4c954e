"""Service settings, read once from the environment (CONTRACT section 4)."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

from runlog.calls import DEFAULT_MAXLEN, DEFAULT_RETENTION_S
from runlog.records import TENANT_RE


class SettingsError(ValueError):
    """An environment variable with a value the service cannot use; names the variable."""


def _number(
    env: Mapping[str, str],
    name: str,
    default: float,
    *,
    integer: bool = False,
    zero_ok: bool = False,
) -> float:
    raw = env.get(name, "")
    if raw == "":
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise SettingsError(f"{name} must be {kind}, got {raw!r}") from None
    if value < 0 or (value == 0 and not zero_ok):
        floor = "0 or more" if zero_ok else "greater than 0"
        raise SettingsError(f"{name} must be {floor}, got {raw!r}")
    return value


def _pairs(env: Mapping[str, str], name: str) -> tuple[tuple[str, str], ...]:
    """``a=b,c=d`` as pairs; a part without ``=`` raises naming the variable."""
    pairs = []
    for part in env.get(name, "").split(","):
        if not part.strip():
            continue
        key, sep, value = (s.strip() for s in part.partition("="))
        if not sep or not key or not value:
            raise SettingsError(f"{name} entries must look like name=value, got {part!r}")
        pairs.append((key, value))
    return tuple(pairs)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _anonymous_tenant(env: Mapping[str, str], host: str) -> str | None:
    """MANTIS_STREAMS_ANONYMOUS_TENANT: the tenant of token-less Durable Streams requests.

    Anyone who can reach the port acts as that tenant, so it is refused unless the service
    listens on a loopback address only (local use, the conformance suite).
    """
    tenant = env.get("MANTIS_STREAMS_ANONYMOUS_TENANT") or None
    if tenant is None:
        return None
    if TENANT_RE.fullmatch(tenant) is None:
        raise SettingsError(
            "MANTIS_STREAMS_ANONYMOUS_TENANT must be a tenant name ([A-Za-z0-9_.-]{1,64})"
        )
    if not _is_loopback(host):
        raise SettingsError(
            "MANTIS_STREAMS_ANONYMOUS_TENANT is only allowed when MANTIS_HOST is a loopback "
            f"address (127.0.0.1, ::1, localhost), got MANTIS_HOST={host!r}"
        )
    return tenant


DEFAULT_WEBHOOK_RETRY_S = (5.0, 30.0, 120.0, 600.0, 1800.0, 7200.0, 21600.0)
MAX_WEBHOOK_RETRIES = 20


def _delays(env: Mapping[str, str], name: str, default: tuple[float, ...]) -> tuple[float, ...]:
    raw = env.get(name, "").strip()
    if raw == "":
        return default
    delays: list[float] = []
    for position, part in enumerate(raw.split(","), start=1):
        try:
            value = float(part)
        except ValueError:
            raise SettingsError(
                f"{name} must list delays in seconds separated by commas; item {position} "
                f"is {part.strip()!r}"
            ) from None
        if not 0 <= value <= 86_400:
            raise SettingsError(f"{name}: item {position} must be between 0 and 86400 seconds")
        delays.append(value)
    if len(delays) > MAX_WEBHOOK_RETRIES:
        raise SettingsError(f"{name} lists more than {MAX_WEBHOOK_RETRIES} retries")
    return tuple(delays)


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise SettingsError(f"{name} must be 1 or 0, got {raw!r}")


def _origins(raw: str) -> tuple[str, ...]:
    return tuple(part.strip().rstrip("/") for part in raw.split(",") if part.strip())


@dataclass(frozen=True)
class Settings:
    """Everything the service reads from its environment."""

    redis_url: str | None = None
    tenant_tokens: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    heartbeat_s: float = 25.0
    stream_max_s: float = 600.0
    stream_maxlen: int = DEFAULT_MAXLEN
    retention_s: int = DEFAULT_RETENTION_S
    client_backlog_bytes: int = 1_048_576
    cors_origins: tuple[str, ...] = ()
    ticket_ttl_s: float = 300.0
    ticket_max_life_s: float = 43_200.0
    ticket_secret: str | None = field(default=None, repr=False)
    redis_max_connections: int = 16
    replay_cache_bytes: int = 64 * 1024 * 1024
    drain_s: float = 5.0
    tenant_max_streams: int = 1000
    page_max_bytes: int = 8 * 1024 * 1024
    replay_batch_bytes: int = 1024 * 1024
    streams_anonymous_tenant: str | None = None
    streams_long_poll_s: float = 10.0
    streams_sse_max_s: float = 60.0
    streams_max_body_bytes: int = 16 * 1024 * 1024
    webhook_retry_s: tuple[float, ...] = DEFAULT_WEBHOOK_RETRY_S
    webhook_concurrency: int = 64
    webhook_endpoint_concurrency: int = 16
    webhook_timeout_s: float = 10.0
    webhook_allow_private: bool = False
    webhook_allow_http: bool = False
    extra: Mapping[str, str] = field(default_factory=dict, repr=False)
    # Metrics: this pod's name (label of mantis_streams_open) and tenant -> class label.
    pod_name: str = ""
    metrics_tenant_classes: tuple[tuple[str, str], ...] = ()

    def __repr__(self) -> str:
        # Settings carry secrets (tokens, a Redis password): never print them.
        return (
            f"Settings(host={self.host!r}, port={self.port}, "
            f"redis={'set' if self.redis_url else 'embedded'}, "
            f"heartbeat_s={self.heartbeat_s}, stream_max_s={self.stream_max_s})"
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read MANTIS_* variables; a bad value raises ``SettingsError`` naming it."""
        env = os.environ if env is None else env
        host = env.get("MANTIS_HOST") or "127.0.0.1"
        return cls(
            redis_url=env.get("MANTIS_REDIS_URL") or None,
            tenant_tokens=env.get("MANTIS_TENANT_TOKENS") or None,
            host=host,
            port=int(_number(env, "MANTIS_PORT", 8080, integer=True)),
            heartbeat_s=_number(env, "MANTIS_HEARTBEAT_S", 25.0),
            stream_max_s=_number(env, "MANTIS_STREAM_MAX_S", 600.0),
            stream_maxlen=int(_number(env, "MANTIS_STREAM_MAXLEN", DEFAULT_MAXLEN, integer=True)),
            retention_s=int(_number(env, "MANTIS_RETENTION_S", DEFAULT_RETENTION_S, integer=True)),
            client_backlog_bytes=int(
                _number(env, "MANTIS_CLIENT_BACKLOG_BYTES", 1_048_576, integer=True)
            ),
            cors_origins=_origins(env.get("MANTIS_CORS_ORIGINS", "")),
            ticket_ttl_s=_number(env, "MANTIS_TICKET_TTL_S", 300.0),
            ticket_max_life_s=_number(env, "MANTIS_TICKET_MAX_LIFE_S", 43_200.0),
            ticket_secret=env.get("MANTIS_TICKET_SECRET") or None,
            redis_max_connections=int(
                _number(env, "MANTIS_REDIS_MAX_CONNECTIONS", 16, integer=True)
            ),
            replay_cache_bytes=int(
                _number(env, "MANTIS_REPLAY_CACHE_BYTES", 64 * 1024 * 1024, integer=True)
            ),
            pod_name=env.get("MANTIS_POD_NAME") or socket.gethostname(),
            metrics_tenant_classes=_pairs(env, "MANTIS_METRICS_TENANT_CLASSES"),
            drain_s=_number(env, "MANTIS_DRAIN_S", 5.0, zero_ok=True),
            tenant_max_streams=int(
                _number(env, "MANTIS_TENANT_MAX_STREAMS", 1000, integer=True)
            ),
            page_max_bytes=int(
                _number(env, "MANTIS_PAGE_MAX_BYTES", 8 * 1024 * 1024, integer=True)
            ),
            replay_batch_bytes=int(
                _number(env, "MANTIS_REPLAY_BATCH_BYTES", 1024 * 1024, integer=True)
            ),
            streams_anonymous_tenant=_anonymous_tenant(env, host),
            streams_long_poll_s=_number(env, "MANTIS_STREAMS_LONG_POLL_S", 10.0),
            streams_sse_max_s=_number(env, "MANTIS_STREAMS_SSE_MAX_S", 60.0),
            streams_max_body_bytes=int(
                _number(env, "MANTIS_STREAMS_MAX_BODY_BYTES", 16 * 1024 * 1024, integer=True)
            ),
            webhook_retry_s=_delays(env, "MANTIS_WEBHOOK_RETRY_S", DEFAULT_WEBHOOK_RETRY_S),
            webhook_concurrency=int(_number(env, "MANTIS_WEBHOOK_CONCURRENCY", 64, integer=True)),
            webhook_endpoint_concurrency=int(
                _number(env, "MANTIS_WEBHOOK_ENDPOINT_CONCURRENCY", 16, integer=True)
            ),
            webhook_timeout_s=_number(env, "MANTIS_WEBHOOK_TIMEOUT_S", 10.0),
            webhook_allow_private=_flag(env, "MANTIS_WEBHOOK_ALLOW_PRIVATE"),
            webhook_allow_http=_flag(env, "MANTIS_WEBHOOK_ALLOW_HTTP"),
        )

    @property
    def loopback_only(self) -> bool:
        """Whether the service listens on a loopback address only (a developer's machine)."""
        return _is_loopback(self.host)  # a host name other than localhost: maybe public

    def exposure_problems(self) -> list[str]:
        """The variables a pod listening beyond loopback must have and lacks (fail closed).

        Without them such a pod would run on an in-memory store, with a dev token printed
        to its log, or with ticket keys no other pod shares.
        """
        if self.loopback_only:
            return []
        required = (
            ("MANTIS_REDIS_URL", self.redis_url),
            ("MANTIS_TENANT_TOKENS", self.tenant_tokens),
            ("MANTIS_TICKET_SECRET", self.ticket_secret),
        )
        return [name for name, value in required if not value]
