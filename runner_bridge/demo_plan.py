"""The demo runner's script: a task suite's ``_micro_plan`` turned into the rows a real
browsing agent would write (pure functions; ``worker.py`` paces and publishes them).

A plan is a list of steps such as ``{"type": "navigate", "url": ...}``, ``{"type": "click",
"target": "#buy"}``, ``{"type": "type", "target": "#q", "text": "lamps"}`` or
``{"type": "extract", "row": {...}}``. Every step gives one ``step`` row (``step_index``,
``type``, its target or url, and a line of reasoning); an extract step then gives one
``extract`` row carrying its ``row``. Rows are numbered 1.. in order: the number is the
row's ``seq``, so a worker that takes a run over and plays the plan again writes each row
exactly once.
"""

from __future__ import annotations

import re
from typing import Any

# What the demo plays when a task suite brings no plan: a short shopping task.
DEFAULT_PLAN: tuple[dict[str, Any], ...] = (
    {"type": "navigate", "url": "https://shop.example/"},
    {"type": "type", "target": "input[name=q]", "text": "desk lamp"},
    {"type": "click", "target": "button[type=submit]"},
    {"type": "extract", "row": {"title": "Brass desk lamp", "price": 49.0}},
    {"type": "click", "target": "a.next-page"},
    {"type": "extract", "row": {"title": "Clamp lamp, black", "price": 24.5}},
)

MAX_STEPS = 1000
_TYPE_RE = re.compile(r"[a-z][a-z_]{0,31}")


class InvalidPlan(ValueError):
    """A ``_micro_plan`` the demo cannot play; the message names the step and the field."""


def _text(step: dict[str, Any], key: str, index: int, *, required: bool) -> str | None:
    value = step.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidPlan(f"_micro_plan[{index}].{key} must be a non-empty string")
    return value


def _reasoning(kind: str, step: dict[str, Any]) -> str:
    target = step.get("target")
    match kind:
        case "navigate":
            return f"Opening {step['url']} to start the task."
        case "click":
            return f"Clicking {target}: it is the control that moves the task forward."
        case "type":
            return f"Typing {step.get('text', '')!r} into {target}."
        case "extract":
            fields = ", ".join(sorted(step["row"]))
            return f"The page shows what the task asks for; reading {fields}."
        case "scroll":
            return "Scrolling to bring the rest of the page into view."
        case "wait":
            return "Waiting for the page to settle before the next action."
    return f"Doing the plan's {kind!r} step" + (f" on {target}." if target else ".")


def plan_rows(plan: object) -> list[list[dict[str, Any]]]:
    """The rows of each step of ``plan`` (``None`` plays ``DEFAULT_PLAN``), in order."""
    if plan is None:
        plan = list(DEFAULT_PLAN)
    if not isinstance(plan, list):
        raise InvalidPlan(f"_micro_plan must be a list of steps, got {type(plan).__name__}")
    if not plan:
        raise InvalidPlan("_micro_plan is empty")
    if len(plan) > MAX_STEPS:
        raise InvalidPlan(f"_micro_plan has {len(plan)} steps; at most {MAX_STEPS}")
    steps: list[list[dict[str, Any]]] = []
    for index, step in enumerate(plan):
        if not isinstance(step, dict):
            raise InvalidPlan(f"_micro_plan[{index}] must be an object")
        kind = _text(step, "type", index, required=True)
        if kind is None or _TYPE_RE.fullmatch(kind) is None:
            raise InvalidPlan(f"_micro_plan[{index}].type {kind!r} must match [a-z][a-z_]{{0,31}}")
        if kind in ("phase", "terminal", "gap"):
            raise InvalidPlan(f"_micro_plan[{index}].type {kind!r} is reserved")
        row: dict[str, Any] = {"kind": "step", "step_index": index + 1, "type": kind}
        if kind == "navigate":
            row["url"] = _text(step, "url", index, required=True)
        target = _text(step, "target", index, required=kind in ("click", "type"))
        if target is not None:
            row["target"] = target
        if kind == "type":
            row["text"] = _text(step, "text", index, required=False) or ""
        if kind == "extract" and not isinstance(step.get("row"), dict):
            raise InvalidPlan(f"_micro_plan[{index}].row must be an object")
        row["reasoning"] = _reasoning(kind, step)
        rows = [row]
        if kind == "extract":
            rows.append({"kind": "extract", "step_index": index + 1, "row": step["row"]})
        steps.append(rows)
    return steps


def plan_of(request: dict[str, Any]) -> object:
    """The ``_micro_plan`` of a submitted body (``None`` when it has none)."""
    suite = request.get("task_suite")
    if not isinstance(suite, dict):
        return None
    return suite.get("_micro_plan")
