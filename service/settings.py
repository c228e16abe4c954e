"""Service settings, read once from the environment (CONTRACT section 4)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from runlog.calls import DEFAULT_MAXLEN, DEFAULT_RETENTION_S


class SettingsError(ValueError):
    """An environment variable with a value the service cannot use; names the variable."""


def _number(env: Mapping[str, str], name: str, default: float, *, integer: bool = False) -> float:
    raw = env.get(name, "")
    if raw == "":
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise SettingsError(f"{name} must be {kind}, got {raw!r}") from None
    if value <= 0:
        raise SettingsError(f"{name} must be greater than 0, got {raw!r}")
    return value


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
    webhook_retry_s: tuple[float, ...] = DEFAULT_WEBHOOK_RETRY_S
    webhook_concurrency: int = 64
    webhook_endpoint_concurrency: int = 16
    webhook_timeout_s: float = 10.0
    webhook_allow_private: bool = False
    webhook_allow_http: bool = False
    extra: Mapping[str, str] = field(default_factory=dict, repr=False)

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
        return cls(
            redis_url=env.get("MANTIS_REDIS_URL") or None,
            tenant_tokens=env.get("MANTIS_TENANT_TOKENS") or None,
            host=env.get("MANTIS_HOST") or "127.0.0.1",
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
            webhook_retry_s=_delays(env, "MANTIS_WEBHOOK_RETRY_S", DEFAULT_WEBHOOK_RETRY_S),
            webhook_concurrency=int(_number(env, "MANTIS_WEBHOOK_CONCURRENCY", 64, integer=True)),
            webhook_endpoint_concurrency=int(
                _number(env, "MANTIS_WEBHOOK_ENDPOINT_CONCURRENCY", 16, integer=True)
            ),
            webhook_timeout_s=_number(env, "MANTIS_WEBHOOK_TIMEOUT_S", 10.0),
            webhook_allow_private=_flag(env, "MANTIS_WEBHOOK_ALLOW_PRIVATE"),
            webhook_allow_http=_flag(env, "MANTIS_WEBHOOK_ALLOW_HTTP"),
        )
