"""Lines of a reasoning.jsonl as bridge calls, and publishing them in pipelined batches.

Shared by ``tail`` and ``replay``: a line is either a row or ``{"kind": "phase", ...}``;
each becomes one prepared script call carrying its byte position in the file, so Redis
records the position atomically with the event and a re-sent line is a no-op.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from redis.exceptions import ResponseError

from runlog.calls import (
    Call,
    LogLimits,
    SourcePosition,
    WriteResult,
    append_call,
    set_phase_call,
    translate_error,
    write_result,
)
from runlog.errors import BridgeError
from runlog.ids import parse_ts_us
from runlog.phases import TERMINAL_PHASES
from runlog.pipeline import AsyncScriptPipeline, ScriptPipeline
from runlog.records import row_record

from .bridge import AsyncBridge, Bridge

# Lines per pipelined round trip: large enough that the round trip is noise next to the
# scripts' own work, small enough that a slow store still sees progress every few ms.
BATCH_LINES = 500


class BadLine(BridgeError, ValueError):
    """A line of a reasoning file that is not a publishable row or phase line."""

    def __init__(self, line_no: int, reason: str) -> None:
        super().__init__(f"line {line_no}: {reason}")
        self.line_no = line_no
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Line:
    """One line of a reasoning file (without its newline) and where it sits in the file."""

    number: int
    offset: int
    next_offset: int
    text: bytes

    @property
    def blank(self) -> bool:
        return not self.text.strip()


@dataclass(frozen=True, slots=True)
class LineCall:
    """A line ready to send: its script call, the phase it moves to (None for a row)."""

    line: Line
    call: Call
    phase: str | None
    ts_us: int | None  # the line's own ts, for pacing; None when it has none

    @property
    def ends_run(self) -> bool:
        return self.phase in TERMINAL_PHASES


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one sent line: written, already written before, or refused."""

    item: LineCall
    result: WriteResult | None
    error: BridgeError | None


def source_name(reader: str, path: Path) -> str:
    """The name positions of ``path`` are recorded under: one per reader and real file."""
    return f"{reader}:{os.path.realpath(path)}"


def parse_line(line: Line) -> dict[str, Any]:
    """Decode a line into a JSON object, or raise ``BadLine`` saying why."""
    try:
        value = orjson.loads(line.text)
    except orjson.JSONDecodeError as exc:
        raise BadLine(line.number, f"not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise BadLine(line.number, f"expected a JSON object, got {type(value).__name__}")
    return value


def line_call(run_id: str, limits: LogLimits, line: Line, source: str) -> LineCall:
    """The prepared call for a line; ``BadLine`` when the line cannot be published."""
    obj = parse_line(line)
    position = SourcePosition(source, line.offset, line.next_offset)
    try:
        if obj.get("kind") == "phase":
            return _phase_line_call(run_id, limits, line, obj, position)
        record = row_record(obj)
    except (BridgeError, ValueError) as exc:
        raise BadLine(line.number, str(exc)) from None
    call = append_call(run_id, obj, limits, position=position, record=record)
    ts_us = record.t_us if isinstance(obj.get("ts"), str) else None
    return LineCall(line, call, None, ts_us)


def _phase_line_call(
    run_id: str, limits: LogLimits, line: Line, obj: dict[str, Any], position: SourcePosition
) -> LineCall:
    phase, ts = obj.get("phase"), obj.get("ts")
    if phase is None:
        raise BadLine(line.number, 'a phase line needs a "phase" field')
    if not isinstance(phase, str):
        raise BadLine(line.number, f"phase must be a string, got {type(phase).__name__}")
    if ts is not None and not isinstance(ts, str):
        raise BadLine(line.number, f"phase ts must be an ISO-8601 string, got {type(ts).__name__}")
    # set_phase_call validates phase and halt_class before anything is sent.
    call = set_phase_call(run_id, phase, limits, obj.get("halt_class"), ts, position)
    return LineCall(line, call, phase, None if ts is None else parse_ts_us(ts))


def ends_batch(pending: Sequence[LineCall]) -> bool:
    """True when the pending lines must be sent now, before the next line joins them.

    A batch is bounded in size, and a phase line always ends its batch: only a phase
    move can be refused mid-stream (an invalid move), so nothing after a refused line
    has been sent when its refusal comes back, and nothing follows a terminal move in
    the same round trip.
    """
    return len(pending) >= BATCH_LINES or pending[-1].phase is not None


class _Batches:
    """What the sync and asyncio batch writers share: turning replies into outcomes.

    Lines carry their file position, so a batch may be re-sent whole (see pipeline.py);
    one refused line (an invalid phase move, say) does not undo or block the others.
    """

    def __init__(self, run_id: str) -> None:
        self._run_id = run_id

    def _outcomes(self, items: Sequence[LineCall], replies: Sequence[Any]) -> list[Outcome]:
        return [self._outcome(item, reply) for item, reply in zip(items, replies, strict=True)]

    def _outcome(self, item: LineCall, reply: Any) -> Outcome:
        if isinstance(reply, ResponseError):
            error = translate_error(reply, self._run_id)
            if not isinstance(error, BridgeError):
                raise error  # not a refusal of this line: the store itself failed
            return Outcome(item, None, error)
        if isinstance(reply, Exception):
            raise reply
        return Outcome(item, write_result(reply), None)


class BatchWriter(_Batches):
    """Sends prepared line calls to one run, one pipelined round trip per batch (asyncio)."""

    def __init__(self, bridge: AsyncBridge, run_id: str) -> None:
        super().__init__(run_id)
        self._bridge = bridge
        self._pipeline: AsyncScriptPipeline | None = None

    async def send(self, items: Sequence[LineCall]) -> list[Outcome]:
        """Send ``items`` in order; one outcome per item. Store failures raise."""
        if self._pipeline is None:
            self._pipeline = AsyncScriptPipeline(self._bridge.client)
        calls = [item.call for item in items]
        return self._outcomes(items, await self._pipeline.execute(calls, idempotent=True))


class SyncBatchWriter(_Batches):
    """Sends prepared line calls to one run, one pipelined round trip per batch (sync).

    The follower uses this one: the sync client packs commands in C (hiredis), so a
    backlog publishes about a fifth faster than through the asyncio client.
    """

    def __init__(self, bridge: Bridge, run_id: str) -> None:
        super().__init__(run_id)
        self._pipeline = ScriptPipeline(bridge.client)

    def send(self, items: Sequence[LineCall]) -> list[Outcome]:
        """Send ``items`` in order; one outcome per item. Store failures raise."""
        calls = [item.call for item in items]
        return self._outcomes(items, self._pipeline.execute(calls, idempotent=True))
