"""Run phases and the moves allowed between them (the single source for Python and Lua)."""

from typing import Final

QUEUED: Final = "queued"
RUNNING: Final = "running"
RECOVERING: Final = "recovering"
COMPLETE: Final = "complete"
HALTED: Final = "halted"
CANCELLED: Final = "cancelled"

PHASES: Final = (QUEUED, RUNNING, RECOVERING, COMPLETE, HALTED, CANCELLED)
TERMINAL_PHASES: Final = frozenset({COMPLETE, HALTED, CANCELLED})

ALLOWED_MOVES: Final[dict[str, frozenset[str]]] = {
    QUEUED: frozenset({RUNNING, CANCELLED}),
    RUNNING: frozenset({RECOVERING, COMPLETE, HALTED, CANCELLED}),
    RECOVERING: frozenset({RUNNING, COMPLETE, HALTED, CANCELLED}),
}

# Event names the service itself emits; no runner row may use one.
RESERVED_EVENT_NAMES: Final = frozenset({"phase", "terminal", "gap"})


def is_terminal(phase: str) -> bool:
    """True for the final phases, after which the log takes no more records."""
    return phase in TERMINAL_PHASES
