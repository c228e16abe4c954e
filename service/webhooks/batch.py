"""Script calls made in the same moment share one pipelined round trip to Redis."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from runlog.calls import Call

Runner = Callable[[Sequence[Call]], Awaitable[list[Any]]]


class CallBatcher:
    """``submit`` returns the call's own reply (an error reply comes back as its exception
    object); a failed round trip raises in every caller of that batch."""

    def __init__(self, run: Runner) -> None:
        self._run = run
        self._pending: list[tuple[Call, asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def submit(self, call: Call) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((call, future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        try:
            while self._pending:
                # One turn of the loop first: the calls of every attempt that finished in
                # this turn join the batch. Calls made during a round trip form the next.
                await asyncio.sleep(0)
                batch, self._pending = self._pending, []
                try:
                    replies = await self._run([call for call, _ in batch])
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), reply in zip(batch, replies, strict=True):
                    if not future.done():
                        future.set_result(reply)
        finally:
            self._flusher = None

    async def aclose(self) -> None:
        """Stop a flush in progress (its callers see the cancellation)."""
        task = self._flusher
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for _, future in self._pending:
            future.cancel()
        self._pending = []
