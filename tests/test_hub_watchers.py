"""A run's channel stays subscribed while any stream still needs it, live or replaying."""

from __future__ import annotations

import asyncio

from runner_bridge import Bridge
from service.appkeys import HUB, READER


async def test_feed_outlives_its_last_live_stream_while_another_replays(
    make_service, bridge: Bridge
) -> None:
    svc = await make_service()
    app = svc.client.server.app
    hub, reader = app[HUB], app[READER]
    run = bridge.open_run("w1", tenant="acme")
    run.set_phase("running")
    state = await reader.state("w1")
    assert state is not None
    first = await hub.watch("w1", state.id_prefix)  # a stream that will end first
    second = await hub.watch("w1", state.id_prefix)  # one still replaying meanwhile
    assert first is second and hub.feed_count == 1
    hub.unwatch(first)
    assert hub.feed_count == 1, "the replaying stream's feed was dropped under it"
    run.append({"kind": "step", "step_index": 1})
    for _ in range(250):  # bounded: the announcement crosses a real socket
        if second.last_n >= 3:
            break
        await asyncio.sleep(0.02)
    assert second.last_n == 3, "announcements stopped reaching the feed"
    hub.unwatch(second)
    assert hub.feed_count == 0
