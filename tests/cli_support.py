"""Helpers of the ``python -m runner_bridge`` tests: run the CLI as a real child process,
read a run's log back, and say what a reasoning file should have become in it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import redis

from runlog.keys import log_key, meta_key

from .conftest import ROOT

TOKEN_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
TERMINAL = {"complete", "halted", "cancelled"}


def cli_env(url: str | None, state_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a CLI child: none of ours, the store given explicitly."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MANTIS_")}
    env["MANTIS_STATE_DIR"] = str(state_dir)  # never discover a developer's embedded store
    if url is not None:
        env["MANTIS_REDIS_URL"] = url
    env.update(extra)
    return env


def run_cli(
    *args: str, url: str | None, state_dir: Path, timeout: float = 30, **extra: str
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m runner_bridge ARGS`` to completion; output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "runner_bridge", *args],
        cwd=ROOT,
        env=cli_env(url, state_dir, **extra),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass
class CliProcess:
    """A CLI child left running; its output goes to files read once it ends."""

    proc: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path

    def wait(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout=timeout)

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def start_cli(*args: str, url: str, workdir: Path, name: str = "cli") -> CliProcess:
    """Start ``python -m runner_bridge ARGS`` in the background."""
    out, err = workdir / f"{name}.out", workdir / f"{name}.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "runner_bridge", *args],
            cwd=ROOT,
            env=cli_env(url, workdir / "state"),
            stdout=stdout,
            stderr=stderr,
        )
    return CliProcess(proc, out, err)


def wait_until(check: Callable[[], bool], what: str, timeout: float = 15) -> None:
    """Poll ``check`` (a child process's effect on the store) until true, or fail."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.005)  # the child's progress is only visible by looking: no event to await
    raise AssertionError(f"timed out waiting for {what}")


def log_events(url: str, run_id: str) -> list[tuple[str, dict[str, Any]]]:
    """Every record of the run's log in order, as (event name, data)."""
    client = redis.Redis.from_url(url)
    try:
        entries = client.xrange(log_key(run_id))
    finally:
        client.close()
    return [(fields[b"e"].decode(), orjson.loads(fields[b"d"])) for _id, fields in entries]


def log_length(url: str, run_id: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return int(client.xlen(log_key(run_id)))
    finally:
        client.close()


def run_phase(url: str, run_id: str) -> str | None:
    client = redis.Redis.from_url(url)
    try:
        raw = client.hget(meta_key(run_id), "phase")
    finally:
        client.close()
    return None if raw is None else raw.decode()


def expected_events(path: Path, run_id: str) -> list[tuple[str, dict[str, Any]]]:
    """What publishing every line of a good reasoning file must put in a new run's log.

    Rows are compared without a ``ts`` the bridge stamped (a row lacking one); the
    caller checks those separately.
    """
    events: list[tuple[str, dict[str, Any]]] = [("phase", {"phase": "queued", "run_id": run_id})]
    for raw in path.read_bytes().splitlines():
        if not raw.strip():
            continue
        obj = orjson.loads(raw)
        if obj.get("kind") == "phase":
            body: dict[str, Any] = {"phase": obj["phase"], "run_id": run_id}
            if "ts" in obj:
                body["ts"] = obj["ts"]
            if obj["phase"] == "halted":
                body["halt_class"] = obj.get("halt_class")
            events.append(("phase", body))
            if obj["phase"] in TERMINAL:
                terminal = {
                    "phase": obj["phase"],
                    "run_id": run_id,
                    "halt_class": obj.get("halt_class"),
                }
                events.append(("terminal", terminal))
            continue
        events.append((event_name(obj), obj))
    return events


def event_name(row: dict[str, Any]) -> str:
    """The contract's event name of a row: kind, else type, else message; tokens only."""
    name = row.get("kind") if row.get("kind") is not None else row.get("type")
    return name if isinstance(name, str) and TOKEN_NAME_RE.fullmatch(name) else "message"


def without_stamps(
    events: list[tuple[str, dict[str, Any]]], expected: list[tuple[str, dict[str, Any]]]
) -> list[tuple[str, dict[str, Any]]]:
    """``events`` with the ts the bridge added dropped where ``expected`` has none."""
    out = []
    for (name, data), (_ename, edata) in zip(events, expected, strict=False):
        if "ts" in data and "ts" not in edata:
            data = {k: v for k, v in data.items() if k != "ts"}
        out.append((name, data))
    return out + events[len(expected) :]
