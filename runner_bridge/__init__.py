"""Runner side of Mantis run events: publish rows and phase moves to a run's Redis log."""

from runlog.errors import (
    BridgeError,
    InvalidPhase,
    InvalidPhaseMove,
    InvalidRow,
    InvalidRunId,
    RunNotFound,
    RunTerminal,
    StoreNotConfigured,
    TenantMismatch,
)

from .bridge import AsyncBridge, AsyncRunHandle, Bridge, RunHandle

__all__ = [
    "AsyncBridge",
    "AsyncRunHandle",
    "Bridge",
    "BridgeError",
    "InvalidPhase",
    "InvalidPhaseMove",
    "InvalidRow",
    "InvalidRunId",
    "RunHandle",
    "RunNotFound",
    "RunTerminal",
    "StoreNotConfigured",
    "TenantMismatch",
]
