"""The reconnect policy of `follow`: cursor, backoff with full jitter, when to give up.

No I/O here: the sync and async clients connect and sleep, this decides for how long.
"""

from __future__ import annotations

import logging
import random

from ._wire import Connection, Event, Outcome
from .errors import MantisConnectionError, MantisError, ServiceUnavailable

logger = logging.getLogger("mantis_agent")

DEFAULT_BACKOFF_BASE_S = 2.0
DEFAULT_BACKOFF_CAP_S = 30.0


class Backoff:
    """Exponential backoff with full jitter: uniform(0, min(cap, base * 2**n))."""

    def __init__(self, base_s: float, cap_s: float, rng: random.Random | None = None) -> None:
        if base_s < 0 or cap_s < 0:
            raise ValueError("backoff base and cap must not be negative")
        self.base_s = base_s
        self.cap_s = cap_s
        self._rng = rng or random.Random()
        self._n = 0

    def next_delay(self) -> float:
        """The next wait; each call without a `reset` doubles its upper bound."""
        # min() on the exponent too, so a long outage cannot overflow the float.
        bound = min(self.cap_s, self.base_s * 2 ** min(self._n, 32))
        self._n += 1
        return self._rng.uniform(0, bound)

    def reset(self) -> None:
        """Start again from `base_s` (after a connection that worked)."""
        self._n = 0


class Follower:
    """State of one `follow` call, between and across connections."""

    def __init__(
        self,
        run_id: str,
        since: str,
        *,
        max_attempts: int | None,
        backoff_base_s: float,
        backoff_cap_s: float,
        rng: random.Random | None = None,
    ) -> None:
        if max_attempts is not None and max_attempts < 1:
            raise ValueError("max_attempts must be at least 1 (or None: no limit)")
        self.run_id = run_id
        self.cursor = since
        self._max_attempts = max_attempts
        self._failures = 0
        self._backoff = Backoff(backoff_base_s, backoff_cap_s, rng)

    def saw(self, event: Event) -> None:
        """Advance the cursor; events without an id (`gap`) are not part of the log."""
        if event["id"]:
            self.cursor = event["id"]

    def after_stream(self, conn: Connection) -> float | None:
        """Seconds to wait before reconnecting, or None once the run is over."""
        if conn.outcome in (Outcome.TERMINAL, Outcome.NO_CONTENT):
            return None
        if conn.retry_ms is not None:
            # The server's `retry:` is its own estimate of a sensible reconnect delay.
            self._backoff.base_s = conn.retry_ms / 1000
        if conn.events or conn.outcome is Outcome.CLOSED:
            # It worked (events came, or the server ended it at its soft limit):
            # reconnect promptly, and forget earlier failures.
            self._failures = 0
            self._backoff.reset()
        else:
            self._count_failure(None, conn.outcome)
        delay = self._backoff.next_delay()
        logger.debug(
            "run %s: stream ended (%s), reconnecting in %.2fs",
            self.run_id,
            conn.outcome.value if conn.outcome else "unknown",
            delay,
        )
        return delay

    def after_error(self, exc: MantisError) -> float:
        """Seconds to wait after a failed connection; re-raises what retrying cannot fix."""
        if not isinstance(exc, ServiceUnavailable | MantisConnectionError):
            raise exc
        self._count_failure(exc, None)
        delay = self._backoff.next_delay()
        if isinstance(exc, ServiceUnavailable) and exc.retry_after is not None:
            delay = max(delay, exc.retry_after)
        logger.debug("run %s: %s; reconnecting in %.2fs", self.run_id, exc, delay)
        return delay

    def _count_failure(self, exc: MantisError | None, outcome: Outcome | None) -> None:
        self._failures += 1
        if self._max_attempts is None or self._failures < self._max_attempts:
            return
        if exc is not None:
            raise exc
        reason = outcome.value if outcome else "no event"
        raise MantisConnectionError(
            f"run {self.run_id}: gave up after {self._failures} consecutive attempts "
            f"without an event (last one: {reason})"
        )
