"""Redis commands from concurrent requests, coalesced into one pipeline per event-loop turn.

A poll is one ``HMGET``, a submit one script call. Sent one by one, each costs the pod a
connection checkout, a socket write and a round trip of its own (~60-90 us of CPU in
redis-py); the ones issued within one turn of the event loop are instead sent together as
one pipeline (~15 us each). Nothing waits for a batch to fill: a command is sent on the
next loop turn, so a lone request costs one ``call_soon`` hop and no latency. The number
of commands does not change; only how they travel. A pipeline is not a transaction: each
command (each script) stands alone, and one refused command does not affect the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from runlog.calls import Call
from runlog.keys import meta_key
from runlog.pipeline import AsyncScriptPipeline

from .runobject import META_FIELDS
from .store_client import StoreClient

Item = TypeVar("Item")

# Bound on one pipeline: a burst larger than this is split over several connections.
MAX_BATCH = 256

# Sends a batch; one reply per item, an Exception instance for an item that failed.
BatchSender = Callable[[Sequence[Item]], Awaitable[Sequence[Any]]]


class Coalescer(Generic[Item]):
    """``await coalescer.call(item)`` -> that item's reply, sent along with its neighbours."""

    def __init__(self, send: BatchSender[Item], max_batch: int = MAX_BATCH) -> None:
        self._send_batch = send
        self._max_batch = max_batch
        self._pending: list[tuple[Item, asyncio.Future[Any]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def call(self, item: Item) -> Any:
        """The reply for ``item``; raises the error of its own command, or the batch's."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((item, future))
        if len(self._pending) == 1:
            loop.call_soon(self._flush)
        elif len(self._pending) >= self._max_batch:
            self._flush()
        return await future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[tuple[Item, asyncio.Future[Any]]]) -> None:
        try:
            replies = await self._send_batch([item for item, _future in batch])
        except asyncio.CancelledError:
            for _item, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # the store is unreachable: every waiting request hears it
            for _item, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_item, future), reply in zip(batch, replies, strict=True):
            if future.done():  # its request went away meanwhile
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def aclose(self) -> None:
        """Let the pipelines in flight finish (their requests are answered), then return."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def meta_reads(store: StoreClient) -> Coalescer[str]:
    """``call(run_id)`` -> the HMGET reply of the run's ``META_FIELDS``."""

    async def send(run_ids: Sequence[str]) -> Sequence[Any]:
        pipe = (await store.get()).pipeline(transaction=False)
        for run_id in run_ids:
            pipe.hmget(meta_key(run_id), META_FIELDS)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies

    return Coalescer(send)


def script_calls(store: StoreClient) -> Coalescer[Call]:
    """``call(call)`` -> the script's reply (its ``ResponseError`` raised if it refused).

    Scripts are called by SHA and loaded again if the store lost them; a call that did not
    run for that reason is sent once more, a call that ran is never repeated.
    """
    pipelines: dict[int, AsyncScriptPipeline] = {}

    async def send(calls: Sequence[Call]) -> Sequence[Any]:
        client = await store.get()
        pipeline = pipelines.get(id(client))
        if pipeline is None:
            pipelines.clear()
            pipeline = pipelines[id(client)] = AsyncScriptPipeline(client)
        return await pipeline.execute(calls)

    return Coalescer(send)
