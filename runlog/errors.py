"""Named errors of the run log's writers; each message says what was wrong."""


class BridgeError(Exception):
    """Base of every error the bridge raises on purpose."""


class InvalidRow(BridgeError, ValueError):
    """A row that cannot be published (not an object, reserved kind, bad ts, too large)."""


class InvalidRunId(BridgeError, ValueError):
    """A run id outside ``[A-Za-z0-9_-]{1,128}``."""


class InvalidPhase(BridgeError, ValueError):
    """An unknown phase name, or a halt_class where none belongs."""


class InvalidPhaseMove(BridgeError, ValueError):
    """A move the phase graph does not allow (``complete -> running``, say); nothing written."""


class RunTerminal(BridgeError, ValueError):
    """A row or phase after the run's terminal record; nothing written."""


class RunNotFound(BridgeError, LookupError):
    """No log exists for that run (never opened, or expired)."""


class TenantMismatch(BridgeError, PermissionError):
    """The run exists and belongs to another tenant."""


class StoreNotConfigured(BridgeError, RuntimeError):
    """No Redis URL was given and no embedded store is running on this machine."""


class RunExists(BridgeError, ValueError):
    """A submit named a run id that is already taken; nothing written."""


class IdempotencyKeyReused(BridgeError, ValueError):
    """An ``Idempotency-Key`` seen before came with another request body; nothing written."""


class InvalidTenant(BridgeError, ValueError):
    """A tenant name outside ``[A-Za-z0-9_.-]{1,64}``."""


class ClaimLost(BridgeError, RuntimeError):
    """The run was taken over by another worker (its claim's fence moved on); nothing written.

    A worker that stalled past the claim timeout learns this on its next write or keep-alive
    and must stop working on the run: another worker continues it.
    """


class InvalidWorker(BridgeError, ValueError):
    """A worker name outside ``[A-Za-z0-9_.:@/-]{1,128}`` (it names a consumer of the queue)."""


class NotReplicated(BridgeError, ConnectionError):
    """A write that fewer replicas confirmed than ``MANTIS_WAIT_REPLICAS`` asks, in time.

    It is written on the primary and may still reach the replicas, or be lost in a failover:
    retry it with the same ``seq`` (a repeat is a no-op)."""
