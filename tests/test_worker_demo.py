"""The demo runner: ``_micro_plan`` -> rows (pure), and ``make run`` (``python -m service
--demo``) showing the whole flow from a queued run to its stream."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from runner_bridge.demo_plan import DEFAULT_PLAN, InvalidPlan, plan_of, plan_rows
from service.demo import DEMO_PLAN, DEMO_RUN_ID

from .conftest import TOKENS
from .queue_support import expected_rows


def test_plan_rows_are_realistic_steps_and_extracts() -> None:
    plan = [
        {"type": "navigate", "url": "https://shop.example/"},
        {"type": "type", "target": "#q", "text": "lamp"},
        {"type": "click", "target": "#buy"},
        {"type": "extract", "row": {"title": "Lamp", "price": 24.5}},
        {"type": "hover", "target": "#menu"},
    ]
    steps = plan_rows(plan)
    flat = [row for rows in steps for row in rows]
    assert [(r["kind"], r["step_index"]) for r in flat] == expected_rows(plan)
    assert flat[0] == {
        "kind": "step", "step_index": 1, "type": "navigate", "url": "https://shop.example/",
        "reasoning": "Opening https://shop.example/ to start the task.",
    }
    assert (flat[1]["target"], flat[1]["text"]) == ("#q", "lamp")
    assert flat[2]["target"] == "#buy" and "#buy" in flat[2]["reasoning"]
    assert flat[4] == {"kind": "extract", "step_index": 4, "row": {"title": "Lamp", "price": 24.5}}
    assert flat[5]["type"] == "hover" and flat[5]["reasoning"]  # unknown types still play
    assert all(r["reasoning"] for r in flat if r["kind"] == "step")


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        ("click", "_micro_plan must be a list of steps, got str"),
        ([], "_micro_plan is empty"),
        ([3], r"_micro_plan\[0\] must be an object"),
        ([{"target": "#a"}], r"_micro_plan\[0\].type must be a non-empty string"),
        ([{"type": "Click!"}], r"_micro_plan\[0\].type 'Click!' must match"),
        ([{"type": "phase"}], r"_micro_plan\[0\].type 'phase' is reserved"),
        ([{"type": "navigate"}], r"_micro_plan\[0\].url must be a non-empty string"),
        ([{"type": "wait"}, {"type": "click"}], r"_micro_plan\[1\].target must be"),
        ([{"type": "extract", "row": [1]}], r"_micro_plan\[0\].row must be an object"),
        ([{"type": "wait"}] * 1001, "at most 1000"),
    ],
)
def test_bad_plans_are_named(plan: object, message: str) -> None:
    with pytest.raises(InvalidPlan, match=message):
        plan_rows(plan)


def test_a_task_suite_without_a_plan_plays_the_default() -> None:
    assert plan_of({"task_suite": {"goal": "x"}}) is None
    assert plan_of({"no": "suite"}) is None
    assert len(plan_rows(None)) == len(DEFAULT_PLAN)
    assert plan_of({"task_suite": {"_micro_plan": DEMO_PLAN}}) == DEMO_PLAN
    plan_rows(DEMO_PLAN)  # the shipped demo plan is valid


def test_make_run_streams_a_run_taken_from_the_queue(
    spawn_service: Callable[..., Any],
) -> None:
    """``python -m service --demo`` on the embedded store: the demo worker takes the
    submitted demo run and its events stream to the end."""
    service = spawn_service(None, "--demo")
    headers = {"X-Mantis-Token": TOKENS["acme"]}
    url = f"{service.base}/v1/runs/{DEMO_RUN_ID}/events?sse=true"
    names: list[str] = []
    deadline = time.monotonic() + 40
    with httpx.Client(timeout=30) as http:
        while "terminal" not in names and time.monotonic() < deadline:
            names = []
            with http.stream("GET", url, headers=headers) as response:
                if response.status_code == 404:  # submitted just after the port opened
                    time.sleep(0.1)
                    continue
                assert response.status_code == 200
                for line in response.iter_lines():
                    if line.startswith("event: "):
                        names.append(line.removeprefix("event: "))
    assert names[:2] == ["phase", "phase"]  # queued, then running under the demo worker
    assert names.count("extract") == 3 and names[-1] == "terminal"
    output = service.log.read_text()
    assert "claimed run 'demo'" in output
    assert "/v1/predict" in output  # the printed instructions
    service.proc.terminate()
    assert service.proc.wait(timeout=20) == 0
    assert "work: took 1 runs, finished 1" in service.log.read_text()
