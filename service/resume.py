"""Where a client's stream starts: the cursor read against the run's retained log."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from runlog.ids import Cursor, IdCursor, format_event_id

from .store import RunState


@dataclass(frozen=True, slots=True)
class ResumePlan:
    """Deliver events numbered above ``after_n`` (and with ts above ``min_t`` when set).

    ``gap`` holds the ``gap`` event's fields when the log cannot vouch for the cursor;
    ``finished`` means the cursor is at or after the terminal event (HTTP 204).
    """

    after_n: int
    min_t: int | None = None
    gap: tuple[str, str | None] | None = None
    finished: bool = False

    def gap_data(self, labels: Mapping[str, str]) -> dict[str, str | None] | None:
        """The ``gap`` event's data (stream and JSON page alike), or None without a gap.

        ``labels`` name the log to the client: ``{"run_id": ...}`` or ``{"tenant": ...}``.
        """
        if self.gap is None:
            return None
        return {**labels, "after": self.gap[0], "resumed_from": self.gap[1]}


def plan_resume(state: RunState, cursor: Cursor, terminal_t: int | None) -> ResumePlan:
    """Decide the start of a stream or page for ``cursor`` on ``state``'s log."""
    first_id = (
        format_event_id(state.epoch, state.first_n) if state.first_n <= state.last_n else None
    )
    trimmed = state.first_n > 1
    if cursor is None:
        # From the start: if the start was trimmed away, say so rather than hide it.
        gap = ("", first_id) if trimmed else None
        return ResumePlan(after_n=state.first_n - 1, gap=gap)
    if isinstance(cursor, IdCursor):
        if cursor.epoch != state.epoch or cursor.n > state.last_n:
            # Issued by another incarnation of the log (lost and re-created), or ahead of
            # what this log holds: nothing after it can be vouched for.
            return ResumePlan(after_n=state.first_n - 1, gap=(cursor.raw, first_id))
        if state.terminal_n is not None and cursor.n >= state.terminal_n:
            return ResumePlan(after_n=cursor.n, finished=True)
        if cursor.n < state.first_n - 1:
            return ResumePlan(after_n=state.first_n - 1, gap=(cursor.raw, first_id))
        return ResumePlan(after_n=cursor.n)
    if terminal_t is not None and terminal_t <= cursor.t_us:
        return ResumePlan(after_n=state.last_n, finished=True)
    lost = trimmed and state.first_t is not None and state.first_t > cursor.t_us
    return ResumePlan(
        after_n=state.first_n - 1,
        min_t=cursor.t_us,
        gap=(cursor.raw, first_id) if lost else None,
    )
