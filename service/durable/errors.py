"""Durable Streams errors: a status, and the protocol headers some of them must carry."""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import ApiError


class StreamError(ApiError):
    """An error answered with protocol headers (``Stream-Closed``, producer state)."""

    headers: Mapping[str, str] = {}

    def __init__(self, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.headers = dict(headers or {})


class BadRequest(StreamError, ValueError):
    code = "bad_request"


class StreamNotFound(StreamError, LookupError):
    status = 404
    code = "stream_not_found"


class StreamConflict(StreamError):
    status = 409
    code = "conflict"


class StaleEpoch(StreamError):
    status = 403
    code = "stale_producer_epoch"


class PayloadTooLarge(StreamError):
    status = 413
    code = "payload_too_large"


class ReadOnlyStream(StreamError):
    status = 405
    code = "method_not_allowed"


class StreamGone(StreamError):
    status = 410
    code = "stream_gone"
