"""The runner-side publisher: sync ``Bridge`` and asyncio ``AsyncBridge``, same methods.

Both take a ready Redis client (``from_url`` builds one), so a test can hand in another.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import AsyncGenerator, Generator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from redis.exceptions import ResponseError

from runlog.calls import (
    DEFAULT_MAXLEN,
    DEFAULT_RETENTION_S,
    Call,
    LogLimits,
    SourcePosition,
    WriteResult,
    append_call,
    open_result,
    open_run_call,
    reepoch_call,
    set_phase_call,
    translate_error,
    write_result,
)
from runlog.connect import (
    AsyncClient,
    SyncClient,
    async_client,
    call_gate,
    is_cluster,
    sync_client,
)
from runlog.errors import InvalidPhase, NotReplicated
from runlog.failover import NumberWatch, Written
from runlog.phases import TERMINAL_PHASES
from runlog.pipeline import AsyncScriptPipeline
from runlog.records import check_run_id
from runlog.store_url import resolve_redis_url

from .consumer import QueueSettings, Stop, default_worker

if TYPE_CHECKING:
    from .ajobs import AsyncJob
    from .jobs import Job


def limits_from_env() -> LogLimits:
    """MANTIS_STREAM_MAXLEN and MANTIS_RETENTION_S (as the service reads them), and the
    durable-append settings MANTIS_WAIT_REPLICAS and MANTIS_WAIT_TIMEOUT_MS."""
    return LogLimits(
        maxlen=_positive_int("MANTIS_STREAM_MAXLEN", DEFAULT_MAXLEN),
        retention_s=_positive_int("MANTIS_RETENTION_S", DEFAULT_RETENTION_S),
        wait_replicas=_positive_int("MANTIS_WAIT_REPLICAS", 0, zero_ok=True),
        wait_timeout_ms=_positive_int("MANTIS_WAIT_TIMEOUT_MS", 1000),
    )


def _positive_int(name: str, default: int, *, zero_ok: bool = False) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    kind = "a non-negative integer" if zero_ok else "a positive integer"
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be {kind}, got {raw!r}") from None
    if value < 0 or (value == 0 and not zero_ok):
        raise ValueError(f"{name} must be {kind}, got {raw!r}")
    return value


def _not_replicated(limits: LogLimits, acked: int) -> NotReplicated:
    return NotReplicated(
        f"written, but {acked} of the {limits.wait_replicas} replicas MANTIS_WAIT_REPLICAS "
        f"asks for confirmed it within {limits.wait_timeout_ms} ms; retry with the same seq"
    )


def _written(result: WriteResult) -> Written:
    return Written(epoch=result.epoch, n=result.n, duplicate=result.duplicate)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def for_client(limits: LogLimits, client: object) -> LogLimits:
    """The limits as this store allows: no tenant feed on a Redis Cluster (another slot)."""
    if limits.feed and is_cluster(client):
        return dataclasses.replace(limits, feed=False)
    return limits


def _finish_phase(phase: str) -> str:
    if phase not in TERMINAL_PHASES:
        raise InvalidPhase(
            f"finish() takes a terminal phase ({', '.join(sorted(TERMINAL_PHASES))})"
        )
    return phase


class RunHandle:
    """One run's writer, from ``Bridge.open_run``."""

    def __init__(
        self, bridge: Bridge, run_id: str, tenant: str, phase: str, *, fence: str = ""
    ) -> None:
        self._bridge = bridge
        self.run_id = run_id
        self.tenant = tenant
        self.phase_at_open = phase
        # A work-queue claim's fence ('' = unfenced): every write carries it, so a worker
        # whose run was taken over cannot write to it any more (``ClaimLost``).
        self.fence = fence

    def append(self, row: dict[str, Any], *, seq: int | None = None) -> str:
        """Publish one row; with ``seq``, a repeat returns the first event's id."""
        call = append_call(self.run_id, row, self._bridge.limits, seq, fence=self.fence)
        return self._bridge._write(self.run_id, call)

    def set_phase(self, phase: str, *, halt_class: str | None = None) -> str:
        """Move the run to ``phase``; returns the id of the last record written."""
        call = set_phase_call(
            self.run_id, phase, self._bridge.limits, halt_class, fence=self.fence
        )
        return self._bridge._write(self.run_id, call)

    def finish(self, phase: str, *, halt_class: str | None = None) -> str:
        """Move into a terminal phase; returns the terminal event's id."""
        return self.set_phase(_finish_phase(phase), halt_class=halt_class)


class Bridge:
    """Sync publisher of run logs."""

    def __init__(self, client: SyncClient, *, limits: LogLimits | None = None) -> None:
        self.client = client
        self.limits = for_client(limits or limits_from_env(), client)
        self._scripts: dict[str, Any] = {}
        self._numbers = NumberWatch()

    @classmethod
    def from_url(cls, url: str | None = None, *, limits: LogLimits | None = None) -> Bridge:
        """Connect to ``url`` (else MANTIS_REDIS_URL, else the embedded store)."""
        return cls(sync_client(resolve_redis_url(url)), limits=limits)

    def open_run(self, run_id: str, *, tenant: str) -> RunHandle:
        """Open (create in ``queued`` if new) the run and return its writer."""
        phase, _created = open_result(self._run(run_id, open_run_call(run_id, tenant, self.limits)))
        return RunHandle(self, run_id, tenant, phase)

    def run(self, run_id: str) -> RunHandle:
        """A writer for an existing run, without opening it (the ``phase`` CLI uses this)."""
        return RunHandle(self, check_run_id(run_id), tenant="", phase="")

    def jobs(
        self,
        worker: str | None = None,
        *,
        stop: Stop | None = None,
        settings: QueueSettings | None = None,
    ) -> Generator[Job, None, None]:
        """Runs taken from the work queue, one at a time, until ``stop`` is set (see
        docs/queue.md): each job's run is already ``running`` and its claim kept alive."""
        from .jobs import iter_jobs  # jobs.py builds on this module

        return iter_jobs(self, worker or default_worker(), stop=stop, settings=settings)

    def write(self, run_id: str, call: Call) -> tuple[str | None, bool]:
        """Run a prepared call; returns (event id, was a duplicate).

        A number already used shows the log went back (a failover): it gets a new epoch
        first (``runlog.failover``). With MANTIS_WAIT_REPLICAS, waits for the replicas.
        """
        result = write_result(self._run(run_id, call))
        event_id = result.event_id
        if self._numbers.went_back(run_id, _written(result)):
            epoch = _text(self._run(run_id, reepoch_call(run_id, result.epoch)))
            event_id = self._numbers.moved(run_id, epoch, result.n)
        limits = self.limits
        if limits.wait_replicas and not is_cluster(self.client):
            acked = int(self.client.wait(limits.wait_replicas, limits.wait_timeout_ms))
            if acked < limits.wait_replicas:
                raise _not_replicated(limits, acked)
        return event_id, result.duplicate

    def _write(self, run_id: str, call: Call) -> str:
        event_id, _dup = self.write(run_id, call)
        return event_id or ""

    def _run(self, run_id: str, call: Call) -> Any:
        source, keys, args = call
        try:
            return self._script(source)(keys=keys, args=args)
        except ResponseError as exc:
            raise translate_error(exc, run_id) from None

    def _script(self, source: str) -> Any:
        # Script objects hash their source once; keep one per script for the client's life.
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = self.client.register_script(source)
        return script

    def close(self) -> None:
        """Close the Redis client, and the pool it was given (``close`` alone leaves a pool
        it did not create connected)."""
        self.client.close()
        pool = getattr(self.client, "connection_pool", None)
        if pool is not None:
            pool.disconnect()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncRunHandle:
    """One run's writer, from ``AsyncBridge.open_run``."""

    def __init__(
        self, bridge: AsyncBridge, run_id: str, tenant: str, phase: str, *, fence: str = ""
    ) -> None:
        self._bridge = bridge
        self.run_id = run_id
        self.tenant = tenant
        self.phase_at_open = phase
        # A work-queue claim's fence ('' = unfenced): every write carries it, so a worker
        # whose run was taken over cannot write to it any more (``ClaimLost``).
        self.fence = fence

    async def append(self, row: dict[str, Any], *, seq: int | None = None) -> str:
        """Publish one row; with ``seq``, a repeat returns the first event's id."""
        call = append_call(self.run_id, row, self._bridge.limits, seq, fence=self.fence)
        return await self._bridge._write(self.run_id, call)

    async def set_phase(self, phase: str, *, halt_class: str | None = None) -> str:
        """Move the run to ``phase``; returns the id of the last record written."""
        await self._bridge._connect()  # the limits depend on the kind of store
        call = set_phase_call(
            self.run_id, phase, self._bridge.limits, halt_class, fence=self.fence
        )
        return await self._bridge._write(self.run_id, call)

    async def finish(self, phase: str, *, halt_class: str | None = None) -> str:
        """Move into a terminal phase; returns the terminal event's id."""
        return await self.set_phase(_finish_phase(phase), halt_class=halt_class)

    async def append_many(self, rows: list[dict[str, Any]]) -> list[str]:
        """Publish rows in one pipelined round trip; each is still its own atomic step."""
        limits = self._bridge.limits
        calls = [append_call(self.run_id, row, limits, fence=self.fence) for row in rows]
        return await self._bridge.write_many(self.run_id, calls)


class AsyncBridge:
    """Asyncio publisher of run logs."""

    def __init__(
        self, client: AsyncClient | None = None, *, limits: LogLimits | None = None, url: str = ""
    ) -> None:
        if client is None and not url:
            raise ValueError("AsyncBridge needs a client or a url")
        self._client = client
        self._url = url
        self.limits = limits or limits_from_env()
        self._gate = call_gate(client)
        if client is not None:
            self.limits = for_client(self.limits, client)
        self._scripts: dict[str, Any] = {}
        self._pipeline: AsyncScriptPipeline | None = None
        self._numbers = NumberWatch()
        # Many tasks may make the first call at once (500 runs opening together): one of
        # them makes the client, the others wait for it, so one pool bounds them all.
        self._connect_lock = asyncio.Lock()

    @property
    def client(self) -> AsyncClient:
        """The Redis client (after the first call when built by ``from_url``)."""
        if self._client is None:
            raise RuntimeError("AsyncBridge has not connected yet")
        return self._client

    async def _connect(self) -> AsyncClient:
        # from_url cannot await, and whether the URL names a cluster node is learnt by
        # asking it: the client is made on first use.
        if self._client is not None:
            return self._client
        async with self._connect_lock:
            if self._client is None:
                client = await async_client(self._url)
                self.limits = for_client(self.limits, client)
                self._gate = call_gate(client)
                self._client = client
            return self._client

    @classmethod
    def from_url(cls, url: str | None = None, *, limits: LogLimits | None = None) -> AsyncBridge:
        """Connect to ``url`` (else MANTIS_REDIS_URL, else the embedded store)."""
        return cls(limits=limits, url=resolve_redis_url(url))

    async def open_run(self, run_id: str, *, tenant: str) -> AsyncRunHandle:
        """Open (create in ``queued`` if new) the run and return its writer."""
        await self._connect()  # the limits depend on the kind of store (cluster or not)
        reply = await self._run(run_id, open_run_call(run_id, tenant, self.limits))
        phase, _created = open_result(reply)
        return AsyncRunHandle(self, run_id, tenant, phase)

    def run(self, run_id: str) -> AsyncRunHandle:
        """A writer for an existing run, without opening it."""
        return AsyncRunHandle(self, check_run_id(run_id), tenant="", phase="")

    def jobs(
        self,
        worker: str | None = None,
        *,
        stop: Stop | None = None,
        settings: QueueSettings | None = None,
    ) -> AsyncGenerator[AsyncJob, None]:
        """``async for job in bridge.jobs(worker=...)``: see ``Bridge.jobs``."""
        from .ajobs import aiter_jobs  # ajobs.py builds on this module

        return aiter_jobs(self, worker or default_worker(), stop=stop, settings=settings)

    async def write(self, run_id: str, call: Call) -> tuple[str | None, bool]:
        """Run a prepared call; returns (event id, was a duplicate); see ``Bridge.write``."""
        result = write_result(await self._run(run_id, call))
        event_id = result.event_id
        if self._numbers.went_back(run_id, _written(result)):
            epoch = _text(await self._run(run_id, reepoch_call(run_id, result.epoch)))
            event_id = self._numbers.moved(run_id, epoch, result.n)
        await self._wait_replicas()
        return event_id, result.duplicate

    async def _wait_replicas(self) -> None:
        limits = self.limits
        if limits.wait_replicas and not is_cluster(self.client):
            async with self._gate:
                acked = int(await self.client.wait(limits.wait_replicas, limits.wait_timeout_ms))
            if acked < limits.wait_replicas:
                raise _not_replicated(limits, acked)

    async def _write(self, run_id: str, call: Call) -> str:
        event_id, _dup = await self.write(run_id, call)
        return event_id or ""

    async def write_many(self, run_id: str, calls: list[Call]) -> list[str]:
        """Pipeline several prepared calls (no MULTI: each script is atomic on its own).

        Every call is sent; the first refusal, if any, is raised afterwards.
        """
        client = await self._connect()
        if self._pipeline is None:
            self._pipeline = AsyncScriptPipeline(client)
        async with self._gate:
            replies = await self._pipeline.execute(calls)
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise translate_error(reply, run_id) from None
            if isinstance(reply, Exception):
                raise reply
        ids = []
        for reply in replies:
            result = write_result(reply)
            event_id = result.event_id or ""
            if self._numbers.went_back(run_id, _written(result)):
                epoch = _text(await self._run(run_id, reepoch_call(run_id, result.epoch)))
                event_id = self._numbers.moved(run_id, epoch, result.n)
            ids.append(event_id)
        await self._wait_replicas()
        return ids

    async def _run(self, run_id: str, call: Call) -> Any:
        source, keys, args = call
        await self._connect()
        try:
            async with self._gate:
                return await self._script(source)(keys=keys, args=args)
        except ResponseError as exc:
            raise translate_error(exc, run_id) from None

    def _script(self, source: str) -> Any:
        # Script objects hash their source once; keep one per script for the client's life.
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = self.client.register_script(source)
        return script

    async def aclose(self) -> None:
        """Close the Redis client."""
        if self._client is not None:
            await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


__all__ = ["AsyncBridge", "AsyncRunHandle", "Bridge", "RunHandle", "SourcePosition"]
