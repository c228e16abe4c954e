"""Event numbers across a Redis failover: what a writer can see, and what it does about it.

With Redis's asynchronous replication, a failover to a replica that had not yet received
the last writes loses them: the run's ``n`` goes back, and the next events are written
under numbers that clients may already have been sent, with other content. Nothing in a
number alone shows that, so the writer watches for it: a write that is not a repeat yet
gets a number at or below one this process already had for the run means the log went
back. The writer then gives the log a new epoch (``scripts.REEPOCH``): every id changes,
so a client's old cursor is recognised as issued by another incarnation of the log and it
gets a ``gap`` event and the retained events again, and the pods end their live streams
of the run (the announcement ``0:<t>:epoch:{}``) so clients resume that way at once.

``MANTIS_WAIT_REPLICAS`` makes it rarer still: each write then waits (Redis ``WAIT``) until
that many replicas have it, and a write they did not confirm in time raises
``NotReplicated`` (it may still be lost; retry it with the same ``seq``).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from .ids import format_event_id

# Announced (with n = 0) when a log changes epoch: the pods end its live streams.
EPOCH_EVENT = b"epoch"
# Runs remembered per writer process; the oldest are forgotten first.
WATCHED_RUNS = 10_000


@dataclass(frozen=True, slots=True)
class Written:
    """One write's outcome as the scripts report it."""

    epoch: str
    n: int
    duplicate: bool


class NumberWatch:
    """The highest event number this process wrote per run, to spot numbers reused."""

    def __init__(self, capacity: int = WATCHED_RUNS) -> None:
        self._last: OrderedDict[str, tuple[str, int]] = OrderedDict()
        self._capacity = capacity

    def went_back(self, run_id: str, written: Written) -> bool:
        """Record ``written``; True when its number was already used in this epoch."""
        if written.n <= 0 or written.duplicate:
            return False
        seen = self._last.get(run_id)
        self._last[run_id] = (written.epoch, written.n)
        self._last.move_to_end(run_id)
        if len(self._last) > self._capacity:
            self._last.popitem(last=False)
        return seen is not None and seen[0] == written.epoch and written.n <= seen[1]

    def moved(self, run_id: str, epoch: str, n: int) -> str:
        """The run's log now has ``epoch``; returns the id of event ``n`` in it."""
        self._last[run_id] = (epoch, n)
        return format_event_id(epoch, n)
