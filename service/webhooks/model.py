"""Webhook endpoints and deliveries as the API shows them, and the payload a delivery sends."""

from __future__ import annotations

import base64
import contextlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

EVENT_TYPES = ("run.finished", "run.phase")
SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32


def new_endpoint_id() -> str:
    return "wh_" + secrets.token_hex(8)


def new_secret() -> str:
    """``whsec_`` and the base64 of 32 random bytes, as Standard Webhooks secrets look."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def iso_ms(ms: float) -> str:
    """UTC ISO-8601 with milliseconds, ``Z``."""
    stamp = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A registered endpoint; ``secret`` leaves the service once, in the 201 answer."""

    id: str
    url: str
    events: tuple[str, ...]
    secret: str
    created_at: str

    @classmethod
    def from_json(cls, raw: bytes | str) -> Endpoint:
        obj = orjson.loads(raw)
        return cls(
            id=obj["id"],
            url=obj["url"],
            events=tuple(obj["events"]),
            secret=obj["secret"],
            created_at=obj["created_at"],
        )

    def stored(self) -> bytes:
        """What the endpoints hash keeps (the script adds the feed position)."""
        return orjson.dumps(
            {
                "id": self.id,
                "url": self.url,
                "events": list(self.events),
                "secret": self.secret,
                "created_at": self.created_at,
            }
        )

    def public(self) -> dict[str, Any]:
        """The endpoint as listed: never the secret."""
        return {"id": self.id, "url": self.url, "events": list(self.events),
                "created_at": self.created_at}


def payload(event_type: str, t_us: int, data: bytes) -> bytes:
    """The body of a delivery, the same bytes on every attempt: ``{"type", "timestamp",
    "data"}`` with ``data`` the run object exactly as the feed carries it."""
    head = orjson.dumps({"type": event_type, "timestamp": iso_ms(t_us / 1000)})
    return head[:-1] + b',"data":' + data + b"}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def delivery_view(delivery_id: str, fields: dict[Any, Any]) -> dict[str, Any]:
    """A delivery hash as ``GET /v1/webhooks/{id}/deliveries`` shows it."""
    f = {_text(k): _text(v) for k, v in fields.items()}
    attempts = []
    for key in sorted((k for k in f if k.startswith("a:")), key=lambda k: int(k[2:])):
        a = orjson.loads(f[key])
        attempts.append(
            {
                "at": iso_ms(a["at_ms"]),
                "status_code": a.get("status_code"),
                "error": a.get("error"),
                "duration_ms": a.get("duration_ms"),
            }
        )
    run: dict[str, Any] = {}
    with contextlib.suppress(orjson.JSONDecodeError):
        run = orjson.loads(f.get("data", "{}"))
    status = f.get("status", "pending")
    next_ms = f.get("next_ms", "")
    in_flight = f.get("inflight") == "1"
    return {
        "id": delivery_id,
        "type": f.get("type"),
        "run_id": run.get("run_id"),
        "phase": run.get("phase"),
        "status": status,
        "created_at": iso_ms(int(f.get("created_ms", "0"))),
        "attempts": attempts,
        "in_flight": in_flight,
        # While an attempt is in flight its due time is the lease's end, not a retry time.
        "next_attempt_at": (
            iso_ms(int(next_ms)) if status == "pending" and next_ms and not in_flight else None
        ),
    }
