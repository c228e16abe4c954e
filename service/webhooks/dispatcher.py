"""The pod's webhook dispatcher: feed events -> deliveries -> attempts, in a loop.

Every pod runs one. Each tick is one pipelined round trip to Redis: for every tenant that
has endpoints, ``INGEST`` (new feed events become deliveries, exactly once whoever runs
it) and ``CLAIM`` (due deliveries leased to this pod, as many as it has free slots for).
Attempts run as tasks, at most ``concurrency`` in the pod and ``per_endpoint`` per
endpoint; each answer is written by ``RECORD``, fenced by its claim number. A pod that
dies holding leases loses nothing: its claims come due again when their leases end, on
any pod.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass

import orjson
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from runlog.calls import Call

from .. import metrics
from .batch import CallBatcher
from .sender import ATTEMPT_TIMEOUT_S, Outcome, Sender
from .store import INGEST_BATCH, Claim, WebhookStore, now_ms

log = logging.getLogger("mantis.webhooks")

POLL_S = 0.1
# How often a pod looks for tenants that have endpoints (a registration on this pod tells
# it at once). A pod with no endpoint anywhere sends Redis one command per this period.
SCAN_S = 2.0
MAX_BACKOFF_S = 5.0
JITTER = 0.1
STOP_GRACE_S = 5.0
RECORD_TRIES = 6


@dataclass(frozen=True, slots=True)
class DispatchConfig:
    """How the dispatcher paces itself (from ``Settings``)."""

    retry_s: tuple[float, ...]
    concurrency: int
    per_endpoint: int
    retention_s: int
    lease_s: float = 2 * ATTEMPT_TIMEOUT_S + 1.0
    poll_s: float = POLL_S

    @property
    def max_attempts(self) -> int:
        return 1 + len(self.retry_s)


def lease_for(timeout_s: float) -> float:
    """A claim's lease: twice an attempt's time limit and a second, room enough to record
    the answer of an attempt that used all of its time."""
    return 2 * timeout_s + 1.0


def retry_delay(delays: Sequence[float], attempt: int) -> float | None:
    """Seconds before the retry that follows attempt ``attempt`` (1-based), jittered by at
    most ``JITTER`` of the delay either way; None when the retries are used up."""
    if attempt > len(delays):
        return None
    base = delays[attempt - 1]
    return max(0.0, base * (1 + random.uniform(-JITTER, JITTER)))


class Dispatcher:
    """Runs the loop as a task between ``start`` and ``stop``."""

    def __init__(
        self,
        hooks: WebhookStore,
        tenants: Sequence[str],
        sender: Sender,
        config: DispatchConfig,
    ) -> None:
        self._hooks = hooks
        self._tenants = list(dict.fromkeys(tenants))
        self._active: list[str] = []
        self._next_scan = 0.0
        self._sender = sender
        self._records = CallBatcher(hooks.run_calls)
        self._config = config
        self._inflight: set[asyncio.Task[None]] = set()
        self._busy: dict[tuple[str, str], int] = {}
        self._wake = asyncio.Event()
        self._more = False
        self._starved = False
        self._stopping = False
        self._turn = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._sender.open()
        self._task = asyncio.create_task(self._loop(), name="webhook-dispatcher")

    async def stop(self) -> None:
        """Stop claiming, give attempts in flight a moment to finish, then cancel them
        (a cancelled attempt's lease ends and another pod makes it again)."""
        # A flag first: the loop ends after its current tick, so no Redis call is cut in
        # the middle (a cancelled connect can leave a half-made connection behind). Only a
        # tick stuck past the grace is cancelled; a library may swallow that cancellation,
        # which the flag also covers.
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            _, running = await asyncio.wait({self._task}, timeout=STOP_GRACE_S)
            if running:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None
        if self._inflight:
            _, pending = await asyncio.wait(set(self._inflight), timeout=STOP_GRACE_S)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        await self._records.aclose()
        await self._sender.close()

    def wake(self, rescan: bool = False) -> None:
        """Tick now; ``rescan``: look again for tenants with endpoints (one was added)."""
        if rescan:
            self._next_scan = 0.0
        self._wake.set()

    async def _loop(self) -> None:
        delay = self._config.poll_s
        while not self._stopping:
            try:
                await self._tick()
                delay = self._config.poll_s if self._active else SCAN_S
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                self._more = False
                log.warning("webhooks: store unreachable (%s); retrying", type(exc).__name__)
                delay = min(MAX_BACKOFF_S, delay * 2)
            except Exception:
                # Whatever went wrong, the loop must outlive it: deliveries wait in Redis.
                self._more = False
                log.exception("webhooks: dispatcher tick failed; retrying")
                delay = min(MAX_BACKOFF_S, delay * 2)
            if self._stopping:
                return
            if self._more:
                await asyncio.sleep(0)  # let attempts run between back-to-back ticks
                continue
            self._wake.clear()
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation
            # that arrives as the wait ends, and then stop() would wait forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    def _shares(self, free: int) -> list[tuple[str, int]]:
        """Split ``free`` slots over the tenants, turn by turn, never more than ``free``."""
        n = len(self._active)
        order = self._active[self._turn % n :] + self._active[: self._turn % n]
        self._turn += 1
        base, extra = divmod(free, n)
        return [(t, base + (1 if i < extra else 0)) for i, t in enumerate(order)
                if base + (1 if i < extra else 0) > 0]

    async def _scan(self) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() < self._next_scan:
            return
        self._active = await self._hooks.tenants_with_endpoints(self._tenants)
        self._next_scan = loop.time() + SCAN_S

    async def _tick(self) -> None:
        await self._scan()
        if not self._active:
            self._more = self._starved = False
            return
        cfg = self._config
        calls: list[Call] = [self._hooks.ingest_call(t, cfg.retention_s) for t in self._active]
        free = cfg.concurrency - len(self._inflight)
        shares = self._shares(free) if free > 0 else []
        for tenant, take in shares:
            busy = {e: c for (t, e), c in self._busy.items() if t == tenant and c > 0}
            calls.append(
                self._hooks.claim_call(
                    tenant,
                    take=take,
                    lease_ms=int(cfg.lease_s * 1000),
                    per_endpoint=cfg.per_endpoint,
                    max_attempts=cfg.max_attempts,
                    retention_s=cfg.retention_s,
                    busy=busy,
                    first=self._turn,
                )
            )
        replies = await self._hooks.run_calls(calls)
        more = False
        claimed = 0
        for reply in replies[: len(self._active)]:
            if isinstance(reply, Exception):
                raise reply
            more = more or int(reply) >= INGEST_BATCH
        for (tenant, take), reply in zip(shares, replies[len(self._active) :], strict=True):
            if isinstance(reply, Exception):
                raise reply
            claims = WebhookStore.claims_from(tenant, reply)
            more = more or len(claims) >= take
            claimed += len(claims)
            for claim in claims:
                self._launch(claim)
        # Full shares: more is due now, tick again at once if slots are free. Any claim at
        # all: more may be due behind an endpoint at its cap, so the next finished attempt
        # wakes the loop (attempts that finish during a tick's round trip share one tick).
        self._more = more and len(self._inflight) < cfg.concurrency
        self._starved = more or claimed > 0

    def _launch(self, claim: Claim) -> None:
        key = (claim.tenant, claim.endpoint.id)
        self._busy[key] = self._busy.get(key, 0) + 1
        task = asyncio.create_task(self._deliver(claim))
        self._inflight.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._inflight.discard(t)
            left = self._busy.get(key, 1) - 1
            if left > 0:
                self._busy[key] = left
            else:
                self._busy.pop(key, None)
            if self._starved:
                self._wake.set()

        task.add_done_callback(done)

    async def _deliver(self, claim: Claim) -> None:
        outcome = await self._sender.attempt(claim)
        await self._record(claim, outcome)

    async def _record(self, claim: Claim, outcome: Outcome) -> None:
        cfg = self._config
        delay = None if outcome.delivered else retry_delay(cfg.retry_s, claim.claim)
        if outcome.delivered:
            verdict, next_ms = "delivered", 0
        elif delay is not None:
            verdict, next_ms = "retry", now_ms() + int(delay * 1000)
        else:
            verdict, next_ms = "failed", 0
        attempt = orjson.dumps(
            {
                "at_ms": outcome.at_ms,
                "status_code": outcome.status_code,
                "error": outcome.error,
                "duration_ms": outcome.duration_ms,
            }
        )
        call = self._hooks.record_call(claim, verdict, attempt, next_ms, cfg.retention_s)
        if not outcome.delivered:
            log.info(
                "webhooks: delivery %s to endpoint %s attempt %d: %s -> %s",
                claim.delivery_id,
                claim.endpoint.id,
                claim.claim,
                outcome.status_code if outcome.error is None else outcome.error,
                verdict,
            )
        pause = 0.2
        for _ in range(RECORD_TRIES):
            try:
                reply = await self._records.submit(call)
            except (RedisError, OSError):
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)
                continue
            if isinstance(reply, Exception):
                log.error("webhooks: recording %s failed: %s", claim.delivery_id, reply)
            elif not reply:
                log.info("webhooks: late answer for %s ignored (lease taken over)",
                         claim.delivery_id)
            else:
                metrics.record_webhook_delivery(verdict)
            return
        # The lease will end and another attempt be made: at least once, never lost.
        log.warning("webhooks: could not record %s; it will be attempted again",
                    claim.delivery_id)
