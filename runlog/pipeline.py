"""Several prepared script calls in one pipelined round trip, on a plain or cluster client.

A pipeline, not a transaction: each script is atomic on its own, and one refused call
does not undo or block the others. Scripts are loaded once and called by SHA. If the store
lost them (a restart, SCRIPT FLUSH), they are loaded again and sent once more: the whole
batch when every call is idempotent (lines carrying their file position, which keeps the
order), else only the calls that did not run.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from typing import Any

from redis.exceptions import NoScriptError

from .calls import Call


@functools.cache
def _sha1(source: str) -> str:
    return hashlib.sha1(source.encode()).hexdigest()


class _Scripts:
    """Which script sources are known to be loaded in the store."""

    def __init__(self) -> None:
        self._loaded: set[str] = set()

    def to_load(self, calls: Sequence[Call]) -> set[str]:
        return {call[0] for call in calls} - self._loaded

    def loaded(self, source: str) -> None:
        self._loaded.add(source)

    def lost(self, replies: Sequence[Any]) -> list[int]:
        """Positions of the calls that did not run because the store lost its scripts."""
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            self._loaded.clear()
        return missing

    @staticmethod
    def queue(pipe: Any, calls: Sequence[Call]) -> None:
        for source, keys, args in calls:
            pipe.execute_command("EVALSHA", _sha1(source), len(keys), *keys, *args)


class AsyncScriptPipeline(_Scripts):
    """Pipelined script calls over an asyncio client; replies come back, errors included."""

    def __init__(self, client: Any) -> None:
        super().__init__()
        self._client = client

    async def execute(self, calls: Sequence[Call], *, idempotent: bool = False) -> list[Any]:
        """One reply per call, in order; a refused call's reply is its ResponseError."""
        if not calls:
            return []
        replies = await self._once(calls)
        missing = self.lost(replies)
        if missing and idempotent:
            return await self._once(calls)
        if missing:
            again = await self._once([calls[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    async def _once(self, calls: Sequence[Call]) -> list[Any]:
        for source in self.to_load(calls):
            await self._client.script_load(source)
            self.loaded(source)
        pipe = self._client.pipeline(transaction=False)
        self.queue(pipe, calls)
        return list(await pipe.execute(raise_on_error=False))


class ScriptPipeline(_Scripts):
    """Pipelined script calls over a sync client; replies come back, errors included."""

    def __init__(self, client: Any) -> None:
        super().__init__()
        self._client = client

    def execute(self, calls: Sequence[Call], *, idempotent: bool = False) -> list[Any]:
        """One reply per call, in order; a refused call's reply is its ResponseError."""
        if not calls:
            return []
        replies = self._once(calls)
        missing = self.lost(replies)
        if missing and idempotent:
            return self._once(calls)
        if missing:
            again = self._once([calls[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    def _once(self, calls: Sequence[Call]) -> list[Any]:
        for source in self.to_load(calls):
            self._client.script_load(source)
            self.loaded(source)
        pipe = self._client.pipeline(transaction=False)
        self.queue(pipe, calls)
        return list(pipe.execute(raise_on_error=False))
