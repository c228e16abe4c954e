"""One client's stream: replay after its cursor, then hand it to the hub for live events.

The seam is exact because the hub subscribes to the run's channel (and Redis confirms)
before the first replay read: an event is either in a replay read or announced after
it, and event numbers let the client skip what it already has.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from . import metrics
from .frame_cache import FrameCache
from .hub import CLOSED, TERMINAL, Feed, Hub, Subscriber
from .resume import ResumePlan
from .sse import encode_event
from .store import Entry, LogReader, RunState

REPLAY_BATCH = 500
# A replaying client that takes longer than this to accept one batch is cut; it resumes.
DRAIN_TIMEOUT_S = 30.0


Write = Callable[[bytes], Awaitable[None]]


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
) -> None:
    """Send everything after the plan's start, then join live delivery without a seam.

    Replay goes through ``write`` (the response's own, flow-controlled write), so a client
    reading a long history slowly is paced, not cut; one that stops reading is cut after
    ``DRAIN_TIMEOUT_S`` and resumes by cursor.
    """
    after = plan.after_n
    cache = hub.frames
    while not sub.finished:
        cached = (
            None
            if plan.min_t is not None
            else cache.take(state.run_id, state.epoch, after, REPLAY_BATCH)
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
        entries = await reader.after(state.run_id, after, REPLAY_BATCH)
        if entries:
            frames = encode_entries(entries, state, plan.min_t, cache)
            if frames and not await _write(write, frames, sub):
                break
            after = entries[-1].n
            if entries[-1].name == b"terminal":
                sub.finish(TERMINAL)
                break
        caught_up = len(entries) < REPLAY_BATCH and (feed is None or after >= feed.last_n)
        if caught_up or not entries:
            break
    # Event numbers are dense: the distance covered is the count sent (a timestamp
    # cursor's skipped events included; close enough for a rate, and free).
    metrics.count_replayed(after - plan.after_n)
    sub.last_n = after
    if feed is not None and not sub.finished and not sub.transport.is_closing():
        hub.go_live(feed, sub)
