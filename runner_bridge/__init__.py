"""Runner side of Mantis run events: publish rows and phase moves to a run's Redis log."""

from runlog.errors import (
    BridgeError,
    ClaimLost,
    InvalidPhase,
    InvalidPhaseMove,
    InvalidRow,
    InvalidRunId,
    InvalidWorker,
    NotReplicated,
    RunNotFound,
    RunTerminal,
    StoreNotConfigured,
    TenantMismatch,
)

from .ajobs import AsyncJob
from .bridge import AsyncBridge, AsyncRunHandle, Bridge, RunHandle
from .consumer import QueueSettings
from .jobs import Job

__all__ = [
    "AsyncBridge",
    "AsyncJob",
    "AsyncRunHandle",
    "Bridge",
    "BridgeError",
    "ClaimLost",
    "InvalidPhase",
    "InvalidPhaseMove",
    "InvalidRow",
    "InvalidRunId",
    "InvalidWorker",
    "Job",
    "NotReplicated",
    "QueueSettings",
    "RunHandle",
    "RunNotFound",
    "RunTerminal",
    "StoreNotConfigured",
    "TenantMismatch",
]
