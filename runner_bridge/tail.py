"""``tail``: follow a growing reasoning.jsonl and publish each complete line exactly once.

The follower is restartable at any instant (SIGKILL included): every line is sent with
its byte position, the scripts record the position in the run's meta hash in the same
atomic step as the event, and a restarted follower seeks to the recorded position. A
line sent twice anyway (a batch in flight at the kill) is a no-op in Redis.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from runlog.errors import BridgeError, InvalidPhaseMove, RunNotFound, RunTerminal
from runlog.keys import meta_key
from runlog.phases import is_terminal

from .bridge import Bridge
from .lines import BadLine, Line, LineCall, SyncBatchWriter, ends_batch, line_call, source_name

DEFAULT_POLL_INTERVAL_S = 0.05
# Bytes read from the file per pass: thousands of typical lines, bounded memory.
READ_CHUNK = 4 * 1024 * 1024
# A line still unterminated past this size is dropped as bad: no row that large is
# publishable anyway (rows are capped at 1 MiB) and buffering it would be unbounded.
MAX_LINE_BYTES = 4 * 1024 * 1024


class FollowedFileChanged(BridgeError, RuntimeError):
    """The followed file shrank or was replaced: recorded positions no longer match it."""


@dataclass
class TailReport:
    """How a follow ended: lines published, bad lines skipped, the terminal phase reached."""

    published: int = 0
    skipped: int = 0
    final_phase: str | None = None


class LineReader:
    """Complete lines appended to a file, from a byte offset, numbered as in the file."""

    def __init__(self, path: Path, handle: BinaryIO, offset: int, lines_before: int) -> None:
        self._path = path
        self._handle = handle
        self._inode = os.fstat(handle.fileno()).st_ino
        self._offset = offset  # where the first byte of ``_partial`` sits in the file
        self._number = lines_before  # complete lines before ``_offset``
        self._partial = b""
        self._oversized = False  # dropping the rest of a too-long line up to its newline

    @classmethod
    def open_at(cls, path: Path, offset: int) -> LineReader:
        """Open ``path`` at ``offset`` (a line boundary recorded earlier)."""
        handle = path.open("rb")
        try:
            size = os.fstat(handle.fileno()).st_size
            if size < offset:
                raise FollowedFileChanged(
                    f"{path} is {size} bytes but {offset} bytes of it were already published: "
                    "it was truncated or replaced, and a followed reasoning file must only grow"
                )
            lines_before = _count_newlines(handle, offset)
            handle.seek(offset)
        except BaseException:
            handle.close()
            raise
        return cls(path, handle, offset, lines_before)

    def read_complete(self) -> tuple[list[Line], list[BadLine]]:
        """Lines completed since the last call (maybe none) and lines too long to keep."""
        lines: list[Line] = []
        bad: list[BadLine] = []
        chunk = self._handle.read(READ_CHUNK)
        if not chunk:
            return lines, bad
        buffer = self._partial + chunk
        start = 0
        while (end := buffer.find(b"\n", start)) >= 0:
            self._number += 1
            text = buffer[start:end]
            if self._oversized or len(text) > MAX_LINE_BYTES:
                self._oversized = False
                bad.append(BadLine(self._number, f"line is longer than {MAX_LINE_BYTES} bytes"))
            else:
                offset = self._offset + start
                lines.append(Line(self._number, offset, offset + len(text) + 1, text.rstrip(b"\r")))
            start = end + 1
        self._offset += start
        self._partial = buffer[start:]
        if len(self._partial) > MAX_LINE_BYTES:
            self._offset += len(self._partial)
            self._partial = b""
            self._oversized = True
        return lines, bad

    def check_unchanged(self) -> None:
        """Raise ``FollowedFileChanged`` if the path now names a shorter or another file.

        A file that is only gone (moved away) is left alone, like ``tail -F``: the open
        handle still reads whatever its writer appends.
        """
        try:
            stat = os.stat(self._path)
        except FileNotFoundError:
            return
        consumed = self._offset + len(self._partial)
        if stat.st_ino != self._inode or stat.st_size < consumed:
            raise FollowedFileChanged(
                f"{self._path} was truncated or replaced after {consumed} bytes were read; "
                "a followed reasoning file must only grow"
            )

    def close(self) -> None:
        self._handle.close()


def _count_newlines(handle: BinaryIO, end: int) -> int:
    count, remaining = 0, end
    while remaining > 0:
        block = handle.read(min(remaining, READ_CHUNK))
        if not block:
            break
        count += block.count(b"\n")
        remaining -= len(block)
    return count


class Follower:
    """Publishes the lines of one file to one run until the run is terminal or ``stop``.

    Synchronous on purpose: a follower has one thing to do at a time, and the sync Redis
    client packs commands in C, which is much of what a large backlog costs.
    """

    def __init__(
        self,
        bridge: Bridge,
        path: Path,
        run_id: str,
        tenant: str,
        *,
        poll_interval: float = DEFAULT_POLL_INTERVAL_S,
        on_bad_line: Callable[[BadLine], None] = lambda bad: None,
        stop: threading.Event | None = None,
    ) -> None:
        self._bridge = bridge
        self._path = path
        self._run_id = run_id
        self._tenant = tenant
        self._poll = poll_interval
        self._on_bad_line = on_bad_line
        self._stop = stop or threading.Event()
        self.report = TailReport()

    def run(self) -> TailReport:
        """Follow until the run is terminal (returns) or ``stop`` is set (returns early)."""
        handle = self._bridge.open_run(self._run_id, tenant=self._tenant)
        if is_terminal(handle.phase_at_open):
            self.report.final_phase = handle.phase_at_open
            return self.report
        if not self._wait_for_file():
            return self.report
        source = source_name("tail", self._path)
        reader = LineReader.open_at(self._path, self._recorded_position(source))
        try:
            self._follow(reader, SyncBatchWriter(self._bridge, self._run_id), source)
        finally:
            reader.close()
        return self.report

    def _follow(self, reader: LineReader, writer: SyncBatchWriter, source: str) -> None:
        while not self._stop.is_set():
            lines, too_long = reader.read_complete()
            for bad in too_long:
                self._skip(bad)
            if lines:
                if self._publish(writer, lines, source):
                    return
                continue
            reader.check_unchanged()
            if self._run_is_terminal():
                return
            self._stop.wait(self._poll)

    def _publish(self, writer: SyncBatchWriter, lines: list[Line], source: str) -> bool:
        """Publish ``lines`` in pipelined batches; True once the run is terminal.

        Bad lines are reported in file order: a batch is sent before the bad line that
        follows it is reported.
        """
        pending: list[LineCall] = []
        for line in lines:
            if line.blank:
                continue
            try:
                item = line_call(self._run_id, self._bridge.limits, line, source)
            except BadLine as bad:
                if self._send(writer, pending):
                    return True
                pending = []
                self._skip(bad)
                continue
            pending.append(item)
            if ends_batch(pending):
                if self._send(writer, pending):
                    return True
                pending = []
        return self._send(writer, pending)

    def _send(self, writer: SyncBatchWriter, batch: list[LineCall]) -> bool:
        for outcome in writer.send(batch):
            if isinstance(outcome.error, RunTerminal):
                # Ended by someone else (the service cancelling it, say): nothing left to do.
                self._run_is_terminal()
                return True
            if isinstance(outcome.error, InvalidPhaseMove):
                self._skip(BadLine(outcome.item.line.number, str(outcome.error)))
                continue
            if outcome.error is not None:
                raise outcome.error  # the run is gone: no later line can be published
            if outcome.result is not None and not outcome.result.duplicate:
                self.report.published += 1
            if outcome.item.ends_run:
                self.report.final_phase = outcome.item.phase
                return True
        return False

    def _skip(self, bad: BadLine) -> None:
        self.report.skipped += 1
        self._on_bad_line(bad)

    def _wait_for_file(self) -> bool:
        """Wait for the file to exist, like ``tail -F``; False if the run ended or stop."""
        while not self._stop.is_set():
            if self._path.exists():
                return True
            if self._run_is_terminal():
                return False
            self._stop.wait(self._poll)
        return False

    def _recorded_position(self, source: str) -> int:
        raw = self._bridge.client.hget(meta_key(self._run_id), f"pos:{source}")
        return 0 if raw is None else int(raw)

    def _run_is_terminal(self) -> bool:
        phase = self._bridge.client.hget(meta_key(self._run_id), "phase")
        if phase is None:
            raise RunNotFound(f"run {self._run_id!r} no longer exists (expired or deleted)")
        name = phase.decode() if isinstance(phase, bytes) else str(phase)
        if is_terminal(name):
            self.report.final_phase = name
            return True
        return False
