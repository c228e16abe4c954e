"""The demo run that ``make run`` streams: a recorded run replayed at its own pace."""

from __future__ import annotations

import logging
from pathlib import Path

from runner_bridge import AsyncBridge
from runner_bridge.replay import replay_file

DEMO_FILE = Path(__file__).with_name("demo") / "run.jsonl"
DEMO_RUN_ID = "demo"

log = logging.getLogger("mantis.demo")


async def publish_demo(redis_url: str, tenant: str, run_id: str = DEMO_RUN_ID) -> None:
    """Replay the shipped demo run into the store, as a runner would."""
    async with AsyncBridge.from_url(redis_url) as bridge:
        count = await replay_file(bridge, DEMO_FILE, run_id, tenant, speed=1.0)
    log.info("demo run %r published (%d lines)", run_id, count)
