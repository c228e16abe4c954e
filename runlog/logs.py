"""Structured logs for every process of the project: one JSON object per line.

The service, the runner CLI and the workers call ``setup_logging()`` once at start. A line
carries ``ts``, ``level``, ``logger``, ``msg``, the fields a caller passed as ``extra=``,
the fields bound to the current task with ``bind`` (the service binds ``request_id``), and
``exc`` with the traceback when there is one.

Secrets must never be logged in the first place; this module is the last line of defence:
an extra field named like a credential is replaced, and anything in a message that looks
like a stream ticket, a webhook secret or signature, or a password in a Redis URL is masked.

``MANTIS_LOG_LEVEL`` (default ``INFO``) and ``MANTIS_LOG_FORMAT`` (``json``, default, or
``text`` for a human at a terminal) tune it.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import re
import sys
import types
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import IO, Any

import orjson

_EMPTY: Mapping[str, Any] = types.MappingProxyType({})
_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "mantis_log_context", default=_EMPTY
)

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)
_SECRET_FIELD = re.compile(r"token|ticket|secret|signature|password|authorization", re.I)
REDACTED = "[redacted]"
_HANDLER_NAME = "mantis-json"
_SECRET_TEXT = (
    # A stream ticket: v1.<payload>.<mac> (service/tickets.py).
    re.compile(r"\bv1\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{16,}"),
    # A Standard Webhooks secret, and a signature header value.
    re.compile(r"whsec_[A-Za-z0-9+/=_-]+"),
    re.compile(r"\bv1,[A-Za-z0-9+/=]{16,}"),
    # The password part of a redis:// or rediss:// URL.
    re.compile(r"(?<=rediss://)[^@\s/]*@|(?<=redis://)[^@\s/]*@"),
)


def scrub(text: str) -> str:
    """``text`` with anything shaped like a ticket, webhook secret or URL password masked."""
    for pattern in _SECRET_TEXT:
        text = pattern.sub(REDACTED, text)
    return text


@contextlib.contextmanager
def bind(**fields: Any) -> Iterator[None]:
    """Add ``fields`` to every line logged by this task (and tasks it starts) inside."""
    token = _context.set({**_context.get(), **fields})
    try:
        yield
    finally:
        _context.reset(token)


def bind_fields(**fields: Any) -> contextvars.Token[Mapping[str, Any]]:
    """Like ``bind`` for a middleware: returns the token to pass to ``unbind``."""
    return _context.set({**_context.get(), **fields})


def unbind(token: contextvars.Token[Mapping[str, Any]]) -> None:
    """Undo ``bind_fields``."""
    _context.reset(token)


def _timestamp(created: float) -> str:
    moment = datetime.fromtimestamp(created, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _safe(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, int | float | bool) or value is None:
        return value
    return scrub(str(value))


class JsonFormatter(logging.Formatter):
    """One JSON object per record, secrets masked."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": scrub(record.getMessage()),
        }
        for key, value in _context.get().items():
            line[key] = REDACTED if _SECRET_FIELD.search(key) else _safe(value)
        for key, value in vars(record).items():
            if key in _STANDARD or key.startswith("_"):
                continue
            line[key] = REDACTED if _SECRET_FIELD.search(key) else _safe(value)
        if record.exc_info:
            line["exc"] = scrub(self.formatException(record.exc_info))
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    """For a terminal: the usual one-line format, secrets masked, bound fields appended."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = scrub(super().format(record))
        bound = _context.get()
        if bound:
            text += " " + " ".join(f"{k}={_safe(v)}" for k, v in bound.items())
        return text


def setup_logging(
    *,
    level: str | None = None,
    fmt: str | None = None,
    stream: IO[str] | None = None,
    default_level: str = "INFO",
) -> None:
    """Send every logger's records to ``stream`` (stderr) in the chosen format, once.

    ``level`` wins over MANTIS_LOG_LEVEL, which wins over ``default_level`` (the runner CLI
    passes WARNING: its stderr is for a person unless asked otherwise).
    """
    level_name = (level or os.environ.get("MANTIS_LOG_LEVEL") or default_level).upper()
    if level_name not in logging.getLevelNamesMapping():
        raise ValueError(f"MANTIS_LOG_LEVEL must be a logging level name, got {level_name!r}")
    kind = (fmt or os.environ.get("MANTIS_LOG_FORMAT") or "json").lower()
    if kind not in ("json", "text"):
        raise ValueError(f"MANTIS_LOG_FORMAT must be json or text, got {kind!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if kind == "json" else TextFormatter())
    handler.set_name(_HANDLER_NAME)
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == _HANDLER_NAME:  # a second call replaces ours, keeps others'
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level_name)
