"""Encoded SSE frames of recent events, shared by every stream of the pod.

A replay storm (hundreds of clients resuming one run at once) would otherwise read and
encode the same events once per client. Frames are cached per run and log incarnation
(epoch), by event number, when they are first encoded: on live delivery, or on the first
replay read. Log entries never change once written, so a cached frame is never stale.
Whole runs are evicted least recently used first once the cache passes its byte bound.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

# Rough per-entry cost of a dict slot and a bytes object header, so the bound tracks memory.
_ENTRY_OVERHEAD = 120


@dataclass(slots=True)
class RunFrames:
    """One incarnation of one run's log: frames by event number."""

    epoch: str
    frames: dict[int, bytes] = field(default_factory=dict)
    terminal_n: int | None = None
    nbytes: int = 0


@dataclass(frozen=True, slots=True)
class CachedRange:
    """Contiguous cached frames starting right after the asked position."""

    payload: bytes
    last_n: int
    terminal: bool


class FrameCache:
    """Frames of recent events for every run of the pod, bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._runs: OrderedDict[str, RunFrames] = OrderedDict()

    def _run(self, run_id: str, epoch: str) -> RunFrames:
        run = self._runs.get(run_id)
        if run is None or run.epoch != epoch:
            if run is not None:
                self.nbytes -= run.nbytes
            run = self._runs[run_id] = RunFrames(epoch)
        self._runs.move_to_end(run_id)
        return run

    def put(self, run_id: str, epoch: str, n: int, frame: bytes, terminal: bool) -> None:
        """Remember event ``n``'s frame (idempotent)."""
        if self.max_bytes <= 0:
            return
        run = self._run(run_id, epoch)
        if n in run.frames:
            return
        run.frames[n] = frame
        cost = len(frame) + _ENTRY_OVERHEAD
        run.nbytes += cost
        self.nbytes += cost
        if terminal:
            run.terminal_n = n
        self._evict(keep=run_id)

    def take(self, run_id: str, epoch: str, after_n: int, limit: int) -> CachedRange | None:
        """Up to ``limit`` cached frames after ``after_n``, stopping at the first one missing."""
        run = self._runs.get(run_id)
        if run is None or run.epoch != epoch:
            return None
        frames = run.frames
        n = after_n + 1
        parts: list[bytes] = []
        stop = after_n + limit
        while n <= stop:
            frame = frames.get(n)
            if frame is None:
                break
            parts.append(frame)
            if n == run.terminal_n:
                n += 1
                break
            n += 1
        if not parts:
            return None
        self._runs.move_to_end(run_id)
        last = n - 1
        return CachedRange(b"".join(parts), last, last == run.terminal_n)

    def _evict(self, keep: str) -> None:
        while self.nbytes > self.max_bytes and len(self._runs) > 1:
            run_id, run = next(iter(self._runs.items()))
            if run_id == keep:
                self._runs.move_to_end(run_id)
                continue
            del self._runs[run_id]
            self.nbytes -= run.nbytes
        if self.nbytes > self.max_bytes:
            # One run larger than the whole bound: drop its oldest frames.
            run = self._runs[keep]
            for n in sorted(run.frames)[: max(1, len(run.frames) // 4)]:
                cost = len(run.frames.pop(n)) + _ENTRY_OVERHEAD
                run.nbytes -= cost
                self.nbytes -= cost
