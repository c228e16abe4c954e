"""Python SDK for Mantis run event streams."""

from ._runs import RunHandle
from ._wire import Event
from .aio import AsyncMantisClient
from .client import MantisClient
from .errors import (
    BadRequest,
    ConfigurationError,
    Conflict,
    IdempotencyKeyReused,
    InvalidCursor,
    MantisConnectionError,
    MantisError,
    PayloadTooLarge,
    RunExists,
    RunFinished,
    RunNotFound,
    ServiceUnavailable,
    Unauthorized,
    UnexpectedResponse,
    WaitTimeout,
)

__all__ = [
    "AsyncMantisClient",
    "BadRequest",
    "ConfigurationError",
    "Conflict",
    "Event",
    "IdempotencyKeyReused",
    "InvalidCursor",
    "MantisClient",
    "MantisConnectionError",
    "MantisError",
    "PayloadTooLarge",
    "RunExists",
    "RunFinished",
    "RunHandle",
    "RunNotFound",
    "ServiceUnavailable",
    "Unauthorized",
    "UnexpectedResponse",
    "WaitTimeout",
]
