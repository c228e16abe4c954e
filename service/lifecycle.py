"""The lifecycle writes the service makes itself: submit a run, cancel a run.

Each is one of the core's atomic scripts (``runlog.calls``): creating the run, keeping its
request, queueing it and recording the idempotency key happen together or not at all.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from runlog.calls import Call, LogLimits, cancel_call, submit_call, translate_error
from runlog.connect import is_cluster

from .coalesce import script_calls
from .errors import NotSupported
from .settings import Settings
from .store_client import StoreClient


class SubmitOutcome(enum.Enum):
    CREATED = "created"
    REPLAYED = "replayed"


class CancelOutcome(enum.Enum):
    CANCELLED = "cancelled"  # it was queued: now cancelled, terminal record written
    REQUESTED = "requested"  # it is running: its runner is asked to finish it cancelled


@dataclass(frozen=True, slots=True)
class Submitted:
    """What a submit did, and the run it names (the first one, for a replay)."""

    outcome: SubmitOutcome
    run_id: str


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Lifecycle:
    """Runs the submit and cancel scripts on the pod's client; errors come back named
    (``runlog.errors``: RunExists, IdempotencyKeyReused, RunTerminal, RunNotFound)."""

    def __init__(self, store: StoreClient, settings: Settings) -> None:
        self._store = store
        self._limits = LogLimits(maxlen=settings.stream_maxlen, retention_s=settings.retention_s)
        self._calls = script_calls(store)

    async def submit(
        self,
        run_id: str,
        tenant: str,
        request: bytes,
        *,
        idempotency_digest: str | None,
        body_digest: str,
    ) -> Submitted:
        """Create, keep and queue the run (or name the run an earlier identical submit made)."""
        if is_cluster(await self._store.get()):
            # The run's keys, the queue and the idempotency record live in three slots,
            # which one script cannot touch on a Redis Cluster.
            raise NotSupported("submitting runs is not supported on a Redis Cluster store yet")
        limits = await self._current_limits()
        call = submit_call(
            run_id,
            tenant,
            request,
            limits,
            idempotency_digest=idempotency_digest,
            body_digest=body_digest,
        )
        outcome, named = await self._run(run_id, call)
        return Submitted(SubmitOutcome(_text(outcome)), _text(named))

    async def cancel(self, run_id: str) -> CancelOutcome:
        """Cancel a queued run at once, or flag a running one for its runner."""
        reply = await self._run(run_id, cancel_call(run_id, await self._current_limits()))
        return CancelOutcome(_text(reply[0]))

    async def _current_limits(self) -> LogLimits:
        # No tenant feed on a Redis Cluster: the feed's keys live in another slot.
        client = await self._store.get()
        if is_cluster(client) and self._limits.feed:
            return dataclasses.replace(self._limits, feed=False)
        return self._limits

    async def _run(self, run_id: str, call: Call) -> Any:
        # Concurrent submits and cancels travel together (``coalesce``); each script is
        # still atomic on its own.
        try:
            return await self._calls.call(call)
        except ResponseError as exc:
            raise translate_error(exc, run_id) from None

    async def aclose(self) -> None:
        """Finish the calls in flight."""
        await self._calls.aclose()
