"""Ended streams leave the pod's deadline heap, instead of waiting there for their soft
limit: a pod whose clients reconnect often keeps a heap the size of its open streams."""

from __future__ import annotations

import asyncio

from service.appkeys import HUB
from service.hub import CLOSED, Subscriber


class _Sink(asyncio.Transport):
    """A transport that takes everything (the streams here never write)."""

    def write(self, data: object) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False


async def test_ended_streams_leave_the_deadline_heap(make_service) -> None:
    svc = await make_service(stream_max_s=600)
    hub = svc.client.server.app[HUB]
    keep = []
    for i in range(2_000):
        sub = Subscriber(
            _Sink(), last_n=0, min_t=None, deadline=hub.deadline(), backlog_limit=1 << 20
        )
        hub.track(sub)
        if i % 100 == 0:
            keep.append(sub)  # 20 streams stay open
            continue
        sub.finish(CLOSED)
        hub.release(sub)
    assert hub.stream_count == 20
    assert len(hub._deadlines) <= 2 * 20 + 64 + 1  # not the 2,000 that were tracked
    assert all(any(item[2] is sub for item in hub._deadlines) for sub in keep)
    for sub in keep:
        sub.finish(CLOSED)
        hub.release(sub)
