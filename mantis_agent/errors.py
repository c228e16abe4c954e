"""Errors the SDK raises: one base class, each also a fitting built-in.

Messages are built from the endpoint, the run id and the server's own error body;
the token is never passed in, so no message can carry it.
"""

from __future__ import annotations


class MantisError(Exception):
    """Base of every error raised by `mantis_agent`."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status


class ConfigurationError(MantisError, ValueError):
    """The client was given (or the environment holds) unusable settings."""


class MantisConnectionError(MantisError, ConnectionError):
    """The service could not be reached, or `follow` gave up reconnecting."""


class Unauthorized(MantisError, PermissionError):
    """401: no token, or one the service does not know."""


class RunNotFound(MantisError, LookupError):
    """404: no such run, or another tenant's (the service does not say which)."""


class BadRequest(MantisError, ValueError):
    """400: the service refused the request as malformed (e.g. `invalid_run_id`)."""


class InvalidCursor(BadRequest):
    """400 `invalid_cursor`: `since` is neither an event id, a timestamp nor empty."""


class ServiceUnavailable(MantisError, ConnectionError):
    """503 (or another 5xx / 429): try again later, after `retry_after` seconds if given."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, code=code, status=status)
        self.retry_after = retry_after


class UnexpectedResponse(MantisError):
    """A response the contract does not describe (another status, not an event stream)."""


class Conflict(MantisError):
    """409: the request conflicts with the run's state."""


class RunExists(Conflict):
    """409 `run_exists`: a submit named a `run_id` that is already taken."""


class RunFinished(Conflict):
    """409 `run_finished`: the run is already over (complete, halted or cancelled)."""


class IdempotencyKeyReused(MantisError, ValueError):
    """422 `idempotency_key_reused`: the key was used within 24 h with another body."""


class PayloadTooLarge(MantisError, ValueError):
    """413 `payload_too_large`: the request body passes the service's 1 MiB bound."""


class WaitTimeout(MantisError, TimeoutError):
    """`wait` gave up: the run was not terminal when its timeout passed."""
