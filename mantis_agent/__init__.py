"""Python SDK for Mantis run event streams."""

from ._wire import Event
from .aio import AsyncMantisClient
from .client import MantisClient
from .errors import (
    BadRequest,
    ConfigurationError,
    InvalidCursor,
    MantisConnectionError,
    MantisError,
    RunNotFound,
    ServiceUnavailable,
    Unauthorized,
    UnexpectedResponse,
)

__all__ = [
    "AsyncMantisClient",
    "BadRequest",
    "ConfigurationError",
    "Event",
    "InvalidCursor",
    "MantisClient",
    "MantisConnectionError",
    "MantisError",
    "RunNotFound",
    "ServiceUnavailable",
    "Unauthorized",
    "UnexpectedResponse",
]
