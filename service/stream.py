"""One client's stream: replay after its cursor, then hand it to the hub for live events.

The seam is exact because the hub subscribes to the run's channel (and Redis confirms)
before the first replay read, and because the hand-over itself happens with no await
after a check that the feed has announced nothing the replay has not read: an event is
either in a replay read or announced after it, and event numbers let the client skip
what it already has. An announcement can land while a read is in flight (the pub/sub
socket is read in the same loop turn in which the read's reply arrives); the feed then
stands past what the read returned, and the replay reads again instead of going live.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

from runlog.ids import format_event_id

from . import metrics
from .frame_cache import FrameCache
from .hub import CLOSED, RESYNC, TERMINAL, Feed, Hub, Subscriber
from .resume import ResumePlan
from .sse import encode_event, gap_frame
from .store import Entry, LogReader, RunState

REPLAY_BATCH = 500
# The first read of a replay is small: nothing is known yet of the run's event sizes.
FIRST_BATCH = 32
# A replaying client that takes longer than this to accept one batch is cut; it resumes.
DRAIN_TIMEOUT_S = 30.0


Write = Callable[[bytes], Awaitable[None]]


class BatchSizer:
    """How many events the next read asks for, so one read holds about ``budget`` bytes.

    Starts at ``first``, grows fourfold per read while reads fit the budget, and
    follows the largest event seen so far downwards: a run of large events is read a few
    at a time (always at least one), a run of small ones ``ceiling`` at a time.
    """

    __slots__ = ("budget", "ceiling", "count", "largest")

    def __init__(self, budget: int, ceiling: int = REPLAY_BATCH, first: int = FIRST_BATCH) -> None:
        self.budget = budget
        self.ceiling = ceiling
        self.count = max(1, min(first, ceiling))
        self.largest = 1

    def saw(self, entries: list[Entry]) -> None:
        """Adjust after a read."""
        for entry in entries:
            if len(entry.data) > self.largest:
                self.largest = len(entry.data)
        fits = max(1, self.budget // self.largest)
        self.count = max(1, min(self.ceiling, self.count * 4, fits))


def encode_entries(
    entries: list[Entry], state: RunState, min_t: int | None, cache: FrameCache
) -> bytes:
    """SSE frames of stored events (kept in the pod's cache), filtered by ``min_t`` if set."""
    parts = []
    id_prefix = state.id_prefix
    for entry in entries:
        frame = encode_event(entry.name, id_prefix + b"%010d" % entry.n, entry.data)
        cache.put(state.run_id, state.epoch, entry.n, frame, entry.name == b"terminal")
        if min_t is None or entry.t > min_t:
            parts.append(frame)
    return b"".join(parts)


def trimmed_gap(
    labels: Mapping[str, str], state: RunState, after: int, first: Entry
) -> dict[str, str | None] | None:
    """The ``gap`` event's data when a read starts past ``after + 1`` (trimmed meanwhile);
    ``labels`` name the log to the client (``{"run_id": ...}`` or ``{"tenant": ...}``)."""
    if first.n <= after + 1:
        return None
    return {
        **labels,
        "after": format_event_id(state.epoch, after) if after else "",
        "resumed_from": format_event_id(state.epoch, first.n),
    }


async def _write(write: Write, payload: bytes, sub: Subscriber) -> bool:
    """Write through the response (flow-controlled); cut a client that accepts nothing."""
    try:
        await asyncio.wait_for(write(payload), DRAIN_TIMEOUT_S)
    except (TimeoutError, ConnectionError):
        sub.transport.abort()
        sub.finish(CLOSED)
        return False
    return True


async def replay_then_live(
    hub: Hub,
    reader: LogReader,
    state: RunState,
    plan: ResumePlan,
    sub: Subscriber,
    write: Write,
    feed: Feed | None,
    *,
    batch_bytes: int = 1 << 20,
    labels: Mapping[str, str] | None = None,
) -> None:
    """Send everything after the plan's start, then join live delivery without a seam.

    Replay goes through ``write`` (the response's own, flow-controlled write), so a client
    reading a long history slowly is paced, not cut; one that stops reading is cut after
    ``DRAIN_TIMEOUT_S`` and resumes by cursor. Reads hold about ``batch_bytes`` each.
    """
    after = plan.after_n
    cache = hub.frames
    sizer = BatchSizer(batch_bytes)
    while not sub.finished:
        cached = (
            None
            if plan.min_t is not None
            else cache.take(state.run_id, state.epoch, after, sizer.count)
        )
        if cached is not None:
            # Frames some stream of this pod already encoded: no read, no encoding.
            if not await _write(write, cached.payload, sub):
                break
            after = cached.last_n
            if cached.terminal:
                sub.finish(TERMINAL)
                break
            continue
        # Whether the feed had already announced past ``after`` before this read was sent:
        # then the read must return it (or the log lost it).
        behind = feed is not None and feed.last_n > after
        asked = sizer.count
        entries = await reader.after(state.run_id, after, asked)
        if entries:
            sizer.saw(entries)
            # Trimmed between reads (a run at its length cap, replayed slowly): say so.
            gap = trimmed_gap(labels or {"run_id": state.run_id}, state, after, entries[0])
            frames = encode_entries(entries, state, plan.min_t, cache)
            if gap is not None:
                frames = gap_frame(gap) + frames
            if frames and not await _write(write, frames, sub):
                break
            after = entries[-1].n
            if entries[-1].name == b"terminal":
                sub.finish(TERMINAL)
                break
            if len(entries) < asked and (feed is None or feed.last_n <= after):
                break  # a short read that reached every announcement heard so far
            continue
        if feed is None or feed.last_n <= after:
            break  # caught up with the log and with every announcement heard so far
        if behind:
            # Announced before this read, yet not in the log: the log was lost or
            # re-created; the client resumes by cursor and learns of it from a gap event.
            sub.finish(RESYNC)
            break
        # Announced while this read was in flight: read again before going live.
    # Event numbers are dense: the distance covered is the count sent (a timestamp
    # cursor's skipped events included; close enough for a rate, and free).
    metrics.count_replayed(after - plan.after_n)
    sub.last_n = after
    if feed is not None and not sub.finished and not sub.transport.is_closing():
        hub.go_live(feed, sub)
