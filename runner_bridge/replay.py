"""Republish a recorded reasoning.jsonl with its original pacing (``replay`` CLI, demo run)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .bridge import AsyncBridge
from .lines import BadLine, BatchWriter, Line, LineCall, ends_batch, line_call, source_name


@dataclass
class ReplayReport:
    """How a replay went: lines newly published, lines a previous replay had published,
    and the bad line it stopped at, if any."""

    published: int = 0
    already_published: int = 0
    bad_line: BadLine | None = None


def read_lines(handle: BinaryIO) -> Iterator[Line]:
    """Every line of a file with its byte position (a last unterminated line included)."""
    offset = 0
    for number, text in enumerate(handle, start=1):
        yield Line(number, offset, offset + len(text), text.rstrip(b"\r\n"))
        offset += len(text)


class Pacer:
    """When each line is due: the gap between consecutive ``ts`` values, divided by speed.

    Due times accumulate on the monotonic clock rather than sleeping each gap in turn,
    so the time spent publishing does not stretch the run; a ``ts`` that goes backwards
    or a line without one is due at once. Speed 0 means no pacing at all.
    """

    def __init__(self, speed: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._speed = speed
        self._clock = clock
        self._last_ts: int | None = None
        self._due = 0.0

    def wait_for(self, ts_us: int | None) -> float:
        """Seconds from now until a line with ``ts_us`` is due (0 when it already is)."""
        if self._speed <= 0 or ts_us is None:
            return 0.0
        now = self._clock()
        if self._last_ts is None:
            self._due = now
        else:
            self._due += max(0, ts_us - self._last_ts) / 1_000_000 / self._speed
        self._last_ts = ts_us
        return max(0.0, self._due - now)


async def replay(
    bridge: AsyncBridge, path: Path, run_id: str, tenant: str, speed: float = 1.0
) -> ReplayReport:
    """Publish the lines of ``path`` to ``run_id`` until its terminal line or first bad line.

    Lines are keyed by their byte offset in the file, so replaying the same file to the
    same run again publishes nothing twice. Every line before a bad one stays published.
    """
    # Open the file first: a mistyped path must not leave an empty run behind.
    with path.open("rb") as handle:
        await bridge.open_run(run_id, tenant=tenant)
        return await _replay_lines(bridge, read_lines(handle), run_id, path, speed)


async def _replay_lines(
    bridge: AsyncBridge, lines: Iterator[Line], run_id: str, path: Path, speed: float
) -> ReplayReport:
    source = source_name("replay", path)
    writer = BatchWriter(bridge, run_id)
    pacer = Pacer(speed)
    report = ReplayReport()
    pending: list[LineCall] = []

    async def flush() -> bool:
        """Send what is pending; True when the replay must stop (bad or terminal line)."""
        outcomes = await writer.send(pending)
        pending.clear()
        for outcome in outcomes:
            if outcome.error is not None:
                report.bad_line = BadLine(outcome.item.line.number, str(outcome.error))
                return True
            if outcome.result is not None and outcome.result.duplicate:
                report.already_published += 1
            else:
                report.published += 1
            if outcome.item.ends_run:
                return True
        return False

    for line in lines:
        if line.blank:
            continue
        try:
            item = line_call(run_id, bridge.limits, line, source)
        except BadLine as bad:
            if not await flush():
                report.bad_line = bad
            return report
        delay = pacer.wait_for(item.ts_us)
        if delay > 0:
            if await flush():
                return report
            await asyncio.sleep(delay)
        pending.append(item)
        if ends_batch(pending) and await flush():
            return report
    await flush()
    return report


async def replay_file(
    bridge: AsyncBridge, path: Path, run_id: str, tenant: str, speed: float = 1.0
) -> int:
    """Replay ``path``; returns the number of lines published, raises ``BadLine`` on one."""
    report = await replay(bridge, path, run_id, tenant, speed)
    if report.bad_line is not None:
        raise report.bad_line
    return report.published + report.already_published
