"""Republish a recorded reasoning.jsonl with its original pacing (``replay`` CLI, demo run)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from .bridge import AsyncBridge
from .calls import SourcePosition, append_call, set_phase_call
from .errors import BridgeError
from .ids import parse_ts_us
from .phases import TERMINAL_PHASES
from .records import row_record


class BadLine(BridgeError, ValueError):
    """A line of a reasoning file that is not a publishable row or phase line."""

    def __init__(self, line_no: int, reason: str) -> None:
        super().__init__(f"line {line_no}: {reason}")
        self.line_no = line_no
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Line:
    """One complete line of a reasoning file, and where it sits in the file."""

    number: int
    offset: int
    next_offset: int
    text: bytes


def parse_line(line: Line) -> dict[str, Any]:
    """Decode a line into a JSON object, or raise ``BadLine`` saying why."""
    try:
        value = orjson.loads(line.text)
    except orjson.JSONDecodeError as exc:
        raise BadLine(line.number, f"not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise BadLine(line.number, f"expected a JSON object, got {type(value).__name__}")
    return value


def is_phase_line(obj: dict[str, Any]) -> bool:
    return obj.get("kind") == "phase"


def line_call(run_id: str, bridge: AsyncBridge, line: Line, source: str | None) -> tuple[Any, bool]:
    """The prepared call for a line and whether it ends the run; ``BadLine`` if unusable."""
    obj = parse_line(line)
    position = None if source is None else SourcePosition(source, line.offset, line.next_offset)
    try:
        if is_phase_line(obj):
            phase = obj.get("phase")
            call = set_phase_call(
                run_id, phase, bridge.limits, obj.get("halt_class"), obj.get("ts"), position
            )
            return call, phase in TERMINAL_PHASES
        return append_call(run_id, obj, bridge.limits, position=position, record=row_record(obj)), False
    except (BridgeError, ValueError) as exc:
        raise BadLine(line.number, str(exc)) from None


def read_lines(path: Path, start: int = 0) -> Iterator[Line]:
    """Complete lines of ``path`` from byte offset ``start`` (a last unterminated line is kept)."""
    with path.open("rb") as handle:
        handle.seek(start)
        offset = start
        number = 0
        for number, text in enumerate(handle, start=1):  # noqa: B007
            yield Line(number, offset, offset + len(text), text.rstrip(b"\r\n"))
            offset += len(text)


def line_delay(previous_t: int | None, obj: dict[str, Any], speed: float) -> tuple[float, int | None]:
    """Seconds to wait before publishing ``obj`` at ``speed`` and the new reference ts."""
    ts = obj.get("ts")
    if not isinstance(ts, str):
        return 0.0, previous_t
    try:
        t = parse_ts_us(ts)
    except ValueError:
        return 0.0, previous_t
    if previous_t is None or speed <= 0:
        return 0.0, t
    return max(0.0, (t - previous_t) / 1_000_000 / speed), t


async def replay_file(
    bridge: AsyncBridge, path: Path, run_id: str, tenant: str, speed: float = 1.0
) -> int:
    """Publish every line of ``path`` to ``run_id``; stops at the first bad line (``BadLine``).

    Lines are keyed by their byte offset, so replaying the same file to the same run again
    publishes nothing twice. Returns the number of lines published.
    """
    await bridge.open_run(run_id, tenant=tenant)
    source = f"replay:{path.resolve()}"
    previous_t: int | None = None
    published = 0
    for line in read_lines(path):
        if not line.text.strip():
            continue
        call, ends = line_call(run_id, bridge, line, source)
        delay, previous_t = line_delay(previous_t, parse_line(line), speed)
        if delay:
            await asyncio.sleep(delay)
        await bridge.write(run_id, call)
        published += 1
        if ends:
            break
    return published
