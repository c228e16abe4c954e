"""API errors and the middleware that turns them (and store outages) into JSON bodies."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from redis.exceptions import ClusterError, ReadOnlyError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger("mantis.service")


class ApiError(Exception):
    """An error with an HTTP status and a stable code; the message is shown to the client."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Unauthorized(ApiError, PermissionError):
    status = 401
    code = "unauthorized"


class RunNotFound(ApiError, LookupError):
    status = 404
    code = "run_not_found"


class InvalidCursor(ApiError, ValueError):
    code = "invalid_cursor"


class InvalidRunId(ApiError, ValueError):
    code = "invalid_run_id"


class InvalidLimit(ApiError, ValueError):
    code = "invalid_limit"


class InvalidRequest(ApiError, ValueError):
    code = "invalid_request"


class InvalidJson(ApiError, ValueError):
    code = "invalid_json"


class InvalidAction(ApiError, ValueError):
    code = "invalid_action"


class PayloadTooLarge(ApiError, ValueError):
    status = 413
    code = "payload_too_large"


class Conflict(ApiError):
    status = 409
    code = "conflict"


class RunExists(Conflict):
    code = "run_exists"


class RunFinished(Conflict):
    code = "run_finished"


class IdempotencyKeyReused(ApiError, ValueError):
    status = 422
    code = "idempotency_key_reused"


class NotSupported(ApiError, NotImplementedError):
    status = 501
    code = "not_supported"
class TooManyStreams(ApiError):
    status = 429
    code = "too_many_streams"


class InvalidHeader(ApiError, ValueError):
    code = "invalid_header"


class StoreUnavailable(ApiError, ConnectionError):
    status = 503
    code = "unavailable"


RETRY_AFTER_S = 2


def error_response(status: int, code: str, message: str) -> web.Response:
    """The contract's error body ``{"error": {"code", "message"}}``."""
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status in (429, 503) else None
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )


# The store cannot serve now, but will: unreachable, timing out, out of pooled connections,
# a Redis Cluster mid-failover (CLUSTERDOWN, TRYAGAIN, MASTERDOWN), a primary just demoted
# (READONLY). A soft 503 with Retry-After, never a 500.
STORE_AWAY = (
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionRefusedError,
    ClusterError,
    TryAgainError,
    ReadOnlyError,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map ``ApiError`` and Redis outages to JSON; never echo a secret or a URL."""
    try:
        return await handler(request)
    except ApiError as exc:
        response = error_response(exc.status, exc.code, exc.message)
        # Some protocols answer errors with headers a client acts on (Durable Streams).
        response.headers.update(getattr(exc, "headers", None) or {})
        return response
    except UnicodeError:
        # A header (or query) that is not valid UTF-8: aiohttp hands it over with
        # surrogates, which fail the moment anything encodes them. The client's fault.
        return error_response(400, InvalidHeader.code, "a header is not valid UTF-8")
    except STORE_AWAY as exc:
        log.warning("store unreachable while serving %s: %s", request.path, type(exc).__name__)
        return error_response(503, "unavailable", "the event store cannot be reached; retry later")
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != "application/json":
            code = exc.reason.lower().replace(" ", "_")
            return error_response(exc.status, code, exc.reason)
        raise
