"""Helpers for the work-queue tests: submit runs as the service does, read logs and meta,
and drive ``python -m runner_bridge work`` processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from runlog.calls import LogLimits, cancel_call, submit_call
from runlog.keys import QUEUE_GROUP, log_key, meta_key, queue_key

ROOT = Path(__file__).resolve().parent.parent


def plan(n_steps: int, *, extract_every: int = 3) -> list[dict[str, Any]]:
    """A ``_micro_plan`` of ``n_steps`` steps; every ``extract_every``-th is an extract."""
    steps: list[dict[str, Any]] = []
    for i in range(n_steps):
        if i == 0:
            steps.append({"type": "navigate", "url": "https://shop.example/"})
        elif (i + 1) % extract_every == 0:
            steps.append({"type": "extract", "row": {"item": f"item-{i}", "price": i * 1.5}})
        else:
            steps.append({"type": "click", "target": f"#button-{i}"})
    return steps


def submit(url: str, run_id: str, body: dict[str, Any], tenant: str = "acme") -> None:
    """Submit a run exactly as ``POST /v1/predict`` does (script SUBMIT)."""
    client = redis.Redis.from_url(url)
    try:
        source, keys, args = submit_call(run_id, tenant, orjson.dumps(body), LogLimits())
        reply = client.register_script(source)(keys=keys, args=args)
        assert reply[0] == b"created", reply
    finally:
        client.close()


def submit_plan(url: str, run_id: str, steps: list[dict[str, Any]]) -> None:
    submit(url, run_id, {"task_suite": {"name": run_id, "_micro_plan": steps}})


def cancel(url: str, run_id: str) -> str:
    client = redis.Redis.from_url(url)
    try:
        source, keys, args = cancel_call(run_id, LogLimits())
        reply = client.register_script(source)(keys=keys, args=args)
    finally:
        client.close()
    return str(reply[0].decode())


def read_log(url: str, run_id: str) -> list[tuple[str, dict[str, Any]]]:
    """The run's log as (event name, data)."""
    client = redis.Redis.from_url(url)
    try:
        entries = client.xrange(log_key(run_id))
    finally:
        client.close()
    return [(f[b"e"].decode(), orjson.loads(f[b"d"])) for _id, f in entries]


def read_meta(url: str, run_id: str) -> dict[str, str]:
    client = redis.Redis.from_url(url)
    try:
        raw = client.hgetall(meta_key(run_id))
    finally:
        client.close()
    return {k.decode(): v.decode() for k, v in raw.items()}


def phases(url: str, run_id: str) -> list[str]:
    return [data["phase"] for name, data in read_log(url, run_id) if name == "phase"]


def rows(url: str, run_id: str) -> list[dict[str, Any]]:
    """The runner rows (step and extract events) in log order."""
    return [data for name, data in read_log(url, run_id) if name in ("step", "extract")]


def queue_state(url: str) -> tuple[int, int]:
    """(entries in the queue stream, entries pending in the group)."""
    client = redis.Redis.from_url(url)
    try:
        length = client.xlen(queue_key())
        try:
            pending = client.xpending(queue_key(), QUEUE_GROUP)["pending"]
        except redis.ResponseError:
            pending = 0
    finally:
        client.close()
    return int(length), int(pending)


def wait_for(
    predicate: Callable[[], Any], what: str, deadline_s: float = 30.0, every_s: float = 0.05
) -> Any:
    """Poll ``predicate`` until it is truthy (state in Redis written by another process:
    there is no event to await); fails naming ``what``."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    pytest.fail(f"timed out waiting for {what}")


def is_phase(url: str, run_id: str, *wanted: str) -> bool:
    return read_meta(url, run_id).get("phase") in wanted


def expected_rows(steps: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """(event, step_index) the demo handler writes for a plan: a step row for every step,
    then an extract row after each extract step."""
    out: list[tuple[str, int]] = []
    for i, step in enumerate(steps, start=1):
        out.append(("step", i))
        if step["type"] == "extract":
            out.append(("extract", i))
    return out


def row_keys(url: str, run_id: str) -> list[tuple[str, int]]:
    return [(row["kind"], row["step_index"]) for row in rows(url, run_id)]


@dataclass
class WorkerProc:
    """A ``python -m runner_bridge work`` child process."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout=timeout)


@dataclass
class Workers:
    """Starts worker processes and kills any still running at teardown."""

    url: str
    tmp: Path
    started: list[WorkerProc] = field(default_factory=list)

    def start(self, name: str, *args: str, claim_timeout_s: float = 1.0, **env: str) -> WorkerProc:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("MANTIS_")}
        environ.update(
            MANTIS_REDIS_URL=self.url,
            MANTIS_CLAIM_TIMEOUT_S=str(claim_timeout_s),
            MANTIS_STATE_DIR=str(self.tmp / "state"),
            PYTHONUNBUFFERED="1",
        )
        environ.update(env)
        log = self.tmp / f"worker-{name}.log"
        handle = log.open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "runner_bridge", "work", "--worker", name, *args],
            cwd=ROOT,
            env=environ,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
        handle.close()
        worker = WorkerProc(name=name, proc=proc, log=log)
        self.started.append(worker)
        wait_for(lambda: "waiting for runs" in worker.output() or proc.poll() is not None,
                 f"worker {name} to start")
        if proc.poll() is not None:
            pytest.fail(f"worker {name} exited at start: {worker.output()}")
        return worker

    def stop_all(self) -> None:
        for worker in self.started:
            if worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGCONT)
                worker.proc.kill()
                worker.proc.wait(timeout=10)
