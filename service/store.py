"""Reads of a run's log and state (the service writes only lifecycle moves, via the bridge)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runlog.keys import log_key, meta_key

from .coalesce import meta_reads
from .metrics import timed
from .runobject import RunMeta
from .store_client import StoreClient

_META_FIELDS = (
    "tenant",
    "phase",
    "epoch",
    "n",
    "terminal",
    "created_at",
    "updated_at",
    "halt_class",
)


@dataclass(frozen=True, slots=True)
class RunState:
    """A run's meta hash, plus where its retained log starts."""

    run_id: str
    tenant: str
    phase: str
    epoch: str
    last_n: int
    terminal_n: int | None
    created_at: str | None
    updated_at: str | None
    halt_class: str | None
    first_n: int
    first_t: int | None

    @property
    def id_prefix(self) -> bytes:
        """The bytes every event id of this log incarnation starts with."""
        return self.epoch.encode() + b"-"

    def public(self) -> dict[str, Any]:
        """What a client may see of the run."""
        return {
            "run_id": self.run_id,
            "phase": self.phase,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "halt_class": self.halt_class,
        }


@dataclass(frozen=True, slots=True)
class Entry:
    """One stored event: number, ts in microseconds, SSE name, JSON data."""

    n: int
    t: int
    name: bytes
    data: bytes


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _entry(raw_id: Any, fields: Any) -> Entry:
    # Stream replies are untyped in redis-py; entries are ("<n>-0", {e, d, t}) as bytes.
    return Entry(
        n=int(raw_id.split(b"-", 1)[0]),
        t=int(fields.get(b"t", b"0")),
        name=fields.get(b"e", b"message"),
        data=fields.get(b"d", b"null"),
    )


class LogReader:
    """Reads over a ready async Redis client (a fixed-size pool shared by the whole pod)."""

    def __init__(self, store: StoreClient) -> None:
        self.store = store
        self._meta_reads = meta_reads(store)

    async def aclose(self) -> None:
        """Finish the reads in flight."""
        await self._meta_reads.aclose()

    @timed("ping")
    async def ping(self) -> None:
        """Raise if the store cannot be reached."""
        await (await self.store.get()).ping()

    @timed("state")
    async def state(self, run_id: str) -> RunState | None:
        """The run's state and its first retained entry, in one round trip; None if absent."""
        pipe = (await self.store.get()).pipeline(transaction=False)
        pipe.hmget(meta_key(run_id), _META_FIELDS)
        pipe.xrange(log_key(run_id), "-", "+", count=1)
        values, first = await pipe.execute()
        meta = dict(zip(_META_FIELDS, (_text(v) for v in values), strict=True))
        if meta["tenant"] is None or meta["epoch"] is None:
            return None
        last_n = int(meta["n"] or 0)
        first_entry = _entry(*first[0]) if first else None
        return RunState(
            run_id=run_id,
            tenant=meta["tenant"],
            phase=meta["phase"] or "queued",
            epoch=meta["epoch"],
            last_n=last_n,
            terminal_n=int(meta["terminal"]) if meta["terminal"] else None,
            created_at=meta["created_at"],
            updated_at=meta["updated_at"],
            halt_class=meta["halt_class"],
            first_n=first_entry.n if first_entry else last_n + 1,
            first_t=first_entry.t if first_entry else None,
        )

    @timed("meta")
    async def meta(self, run_id: str) -> RunMeta | None:
        """The run object's fields in one command (the cheap poll); None if absent.

        Concurrent calls share a pipeline (``coalesce.meta_reads``)."""
        return RunMeta.from_values(run_id, await self._meta_reads.call(run_id))

    @timed("entry")
    async def entry(self, run_id: str, n: int) -> Entry | None:
        """Event number ``n``, if still retained."""
        client = await self.store.get()
        found: Any = await client.xrange(log_key(run_id), f"{n}-0", f"{n}-0")
        return _entry(*found[0]) if found else None

    @timed("after")
    async def after(self, run_id: str, after_n: int, count: int) -> list[Entry]:
        """Up to ``count`` events after event number ``after_n``, in log order."""
        client = await self.store.get()
        found: Any = await client.xrange(log_key(run_id), f"{after_n + 1}-0", "+", count=count)
        return [_entry(raw_id, fields) for raw_id, fields in found]
