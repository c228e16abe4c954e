"""A runner's own job handler, loaded by ``python -m runner_bridge work --handler``."""

from __future__ import annotations

from runner_bridge.ajobs import AsyncJob


async def handle(job: AsyncJob) -> None:
    """Echo the task suite's goal as one step, then finish."""
    goal = job.request.get("task_suite", {}).get("goal")
    await job.run.append({"kind": "step", "step_index": 1, "type": "echo", "goal": goal}, seq=1)
    await job.run.finish("complete")
