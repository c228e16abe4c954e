"""One client's stream: replay after its cursor, then hand it to the hub for live events.

The seam is exact because the hub subscribes to the run's channel (and Redis confirms)
before the first replay read: an event is either in a replay read or announced after
it, and event numbers let the client skip what it already has.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from .hub import CLOSED, TERMINAL, Feed, Hub, Subscriber
from .resume import ResumePlan
from .sse import encode_event
from .store import Entry, LogReader, RunState

REPLAY_BATCH = 500
# A replaying client that takes longer than this to accept one batch is cut; it resumes.
DRAIN_TIMEOUT_S = 30.0


def encode_entries(entries: list[Entry], id_prefix: bytes, min_t: int | None) -> bytes:
    """SSE frames of stored events, filtered by ``min_t`` when the cursor was a timestamp."""
    return b"".join(
        encode_event(e.name, id_prefix + b"%010d" % e.n, e.data)
        for e in entries
        if min_t is None or e.t > min_t
    )


Write = Callable[[bytes], Awaitable[None]]


async def replay_then_live(
    hub: Hub,
    reader: LogReader,
    state: RunState,
    plan: ResumePlan,
    sub: Subscriber,
    write: Write,
) -> None:
    """Send everything after the plan's start, then join live delivery without a seam.

    Replay goes through ``write`` (the response's own, flow-controlled write), so a client
    reading a long history slowly is paced, not cut; one that stops reading is cut after
    ``DRAIN_TIMEOUT_S`` and resumes by cursor.
    """
    feed: Feed | None = None
    if state.terminal_n is None:
        feed = await hub.watch(state.run_id, state.id_prefix)
    after = plan.after_n
    while not sub.finished:
        entries = await reader.after(state.run_id, after, REPLAY_BATCH)
        if entries:
            frames = encode_entries(entries, state.id_prefix, plan.min_t)
            if frames:
                try:
                    await asyncio.wait_for(write(frames), DRAIN_TIMEOUT_S)
                except (TimeoutError, ConnectionError):
                    sub.transport.abort()
                    sub.finish(CLOSED)
                    break
            after = entries[-1].n
            if entries[-1].name == b"terminal":
                sub.last_n = after
                sub.finish(TERMINAL)
                break
        caught_up = len(entries) < REPLAY_BATCH and (feed is None or after >= feed.last_n)
        if caught_up or not entries:
            break
    sub.last_n = after
    if feed is None:
        return
    if sub.finished or sub.transport.is_closing():
        hub.unwatch_if_idle(feed)
        return
    hub.go_live(feed, sub)
