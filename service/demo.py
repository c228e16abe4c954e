"""What ``make run`` (``python -m service --demo``) adds to the service: a demo worker and a
demo run that goes through the whole flow (submit -> queue -> worker -> stream).

The worker is a child process, ``python -m runner_bridge work --demo``, on the same store:
exactly what a runner deployment runs, so the demo shows the real queue, claims and
keep-alives. The demo run ``demo`` is submitted the way ``POST /v1/predict`` submits (the
SUBMIT script), with a ``_micro_plan`` the demo worker plays at a human pace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from typing import Any

import orjson
import redis.asyncio as aredis
from redis.exceptions import ResponseError

from runlog.calls import LogLimits, submit_call, translate_error
from runlog.errors import RunExists

DEMO_RUN_ID = "demo"
# Seconds the demo worker is given to finish its runs when the service stops.
WORKER_GRACE_S = 2.0

DEMO_PLAN: list[dict[str, Any]] = [
    {"type": "navigate", "url": "https://shop.example/search?q=usb-c+hub"},
    {"type": "wait"},
    {"type": "extract", "row": {"title": "Hub 7-in-1", "price": 62.07, "currency": "EUR"}},
    {"type": "click", "target": "button#next"},
    {"type": "extract", "row": {"title": "Hub 4-port", "price": 19.9, "currency": "EUR"}},
    {"type": "scroll"},
    {"type": "extract", "row": {"title": "Dock 12-in-1", "price": 129.0, "currency": "EUR"}},
    {"type": "click", "target": "a.checkout"},
]

# The plan of the curl example the demo prints: short enough to read and edit.
TRY_PLAN: list[dict[str, Any]] = [
    {"type": "navigate", "url": "https://shop.example/"},
    {"type": "click", "target": "#deals"},
    {"type": "extract", "row": {"title": "Lamp", "price": 24.5}},
]

log = logging.getLogger("mantis.demo")


async def start_demo_worker(redis_url: str, concurrency: int = 4) -> asyncio.subprocess.Process:
    """``python -m runner_bridge work --demo`` on the service's store, as a child process.

    The URL goes through the environment, not the command line, so no password shows in
    the process list.
    """
    env = {**os.environ, "MANTIS_REDIS_URL": redis_url}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "runner_bridge", "work", "--demo",
        "--concurrency", str(concurrency), "--grace-s", str(WORKER_GRACE_S),
        "--worker", f"demo-{os.getpid()}",
        env=env,
    )


async def stop_demo_worker(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM (runs in hand get the grace period, then go back to the queue), then kill."""
    if proc.returncode is not None:
        return
    proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), WORKER_GRACE_S + 5)
    except TimeoutError:
        proc.kill()
        await proc.wait()


async def submit_demo(
    redis_url: str, tenant: str, run_id: str = DEMO_RUN_ID, limits: LogLimits | None = None
) -> bool:
    """Submit the demo run as ``POST /v1/predict`` would; False when it exists already."""
    body = {"task_suite": {"name": "usb-c hubs under 150 EUR", "_micro_plan": DEMO_PLAN}}
    source, keys, args = submit_call(run_id, tenant, orjson.dumps(body), limits or LogLimits())
    client = aredis.Redis.from_url(redis_url)
    try:
        await client.register_script(source)(keys=keys, args=args)
    except ResponseError as exc:
        error = translate_error(exc, run_id)
        if isinstance(error, RunExists):
            log.info("demo run %r exists already (a store that outlived the service)", run_id)
            return False
        raise error from None
    finally:
        await client.aclose()
    return True


def demo_instructions(base: str, token: str) -> str:
    """How to watch the demo run and submit more, with curl and with the SDK."""
    header = f"-H 'X-Mantis-Token: {token}'"
    predict = orjson.dumps({"task_suite": {"name": "try me", "_micro_plan": TRY_PLAN}}).decode()
    return "\n".join(
        [
            "watch the demo run (submitted to the queue, played by the demo worker):",
            f"  curl -N {header} '{base}/v1/runs/{DEMO_RUN_ID}/events?sse=true'",
            "submit a run of your own and stream it:",
            f"  curl -s {header} -H 'Content-Type: application/json' \\",
            f"       -d '{predict}' {base}/v1/predict",
            f"  curl -N {header} '{base}/v1/runs/<run_id>/events?sse=true'",
            "or with the SDK (predict, then follow the stream to the end):",
            "  python -c \"from mantis_agent.client import MantisClient; "
            f"c = MantisClient('{base}', '{token}'); "
            "h = c.predict({'task_suite': {'_micro_plan': "
            "[{'type': 'click', 'target': '#go'}, {'type': 'extract', 'row': {'ok': 1}}]}}); "
            "[print(e['event'], e['data']) for e in c.follow(h.run_id)]\"",
        ]
    )


async def run_demo(redis_url: str, tenant: str) -> None:
    """The demo for as long as the service runs: the worker, and the demo run submitted."""
    worker = await start_demo_worker(redis_url)
    try:
        await submit_demo(redis_url, tenant)
        await worker.wait()
        log.warning("the demo worker exited with %s", worker.returncode)
    finally:
        with contextlib.suppress(ProcessLookupError):
            await asyncio.shield(stop_demo_worker(worker))
