"""The whole benchmark: every scenario, repeated, each in a fresh environment."""

from __future__ import annotations

import asyncio
import hashlib
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import orjson

from . import scenarios as sc
from .env import environment
from .procs import ROOT, can_pin, core_ticks, raise_nofile
from .profile import format_profile, profile_fanout, profile_storm
from .report import build_rows, format_table, rows_json
from .sizes import Sizes
from .stats import medians

# Streams must not end at their soft limit in the middle of a measurement.
# The per-tenant stream cap (default 1,000) must not refuse the bench's own clients.
LOAD_ENV = {"MANTIS_STREAM_MAX_S": "3600", "MANTIS_TENANT_MAX_STREAMS": "1000000"}
# A core busier than this (with none of ours running) means other work is on the machine.
QUIET_BUSY_PCT = 25.0
# Idle streams: no ping for the whole measurement.
IDLE_ENV = {"MANTIS_STREAM_MAX_S": "7200", "MANTIS_HEARTBEAT_S": "3600",
            "MANTIS_TENANT_MAX_STREAMS": "1000000"}
# Webhooks to a receiver on 127.0.0.1 over http.
HOOK_ENV = {"MANTIS_WEBHOOK_ALLOW_PRIVATE": "1", "MANTIS_WEBHOOK_ALLOW_HTTP": "1"}


@dataclass(frozen=True)
class Entry:
    """One scenario of the plan: which function, on which loop, how many times."""

    key: str
    run: sc.Scenario
    loop: str
    reps: int
    service_env: dict[str, str] = field(default_factory=dict)
    # "service", or the reference: "nchan-memory" / "nchan-redis" (bench/nchan.py)
    server: str = "service"
    # A generous bound on one repetition, so a hung scenario cannot hang the benchmark.
    timeout_s: float = 900.0


def plan(sz: Sizes) -> list[Entry]:
    nchan_reps = sz.reps if sz.nchan else 0
    return [
        Entry("fanout", sc.fanout, "uvloop", sz.reps, LOAD_ENV),
        Entry("fanout_asyncio", sc.fanout, "asyncio", sz.asyncio_fan_reps, LOAD_ENV),
        Entry("idle", sc.idle, "uvloop", sz.reps, IDLE_ENV),
        Entry("idle_asyncio", sc.idle, "asyncio", sz.asyncio_idle_reps, IDLE_ENV),
        Entry("hot_run", sc.hot_run, "uvloop", sz.reps, LOAD_ENV),
        Entry("hot_run_10k", sc.hot_run_big, "uvloop", sz.reps, LOAD_ENV),
        Entry("replay_storm", sc.replay_storm, "uvloop", sz.reps, LOAD_ENV),
        Entry("redis_per_pod", sc.redis_per_pod, "uvloop", 1, LOAD_ENV),
        Entry("bridge", sc.bridge, "uvloop", sz.reps, LOAD_ENV),
        Entry("tail", sc.tail, "uvloop", sz.reps, LOAD_ENV),
        Entry("runs", sc.runs, "uvloop", sz.reps, LOAD_ENV),
        Entry("webhooks", sc.webhooks, "uvloop", sz.reps, {**LOAD_ENV, **HOOK_ENV}),
        # The reference on the same workloads, load generator and machine (--only nchan).
        Entry("nchan_mem_fanout", sc.fanout, "-", nchan_reps, server="nchan-memory"),
        Entry("nchan_redis_fanout", sc.fanout, "-", nchan_reps, server="nchan-redis"),
        Entry("nchan_mem_idle", sc.idle, "-", nchan_reps, server="nchan-memory"),
        Entry("nchan_redis_idle", sc.idle, "-", nchan_reps, server="nchan-redis"),
        Entry("nchan_mem_hot_run", sc.hot_run, "-", nchan_reps, server="nchan-memory"),
        Entry("nchan_mem_hot_run_10k", sc.hot_run_big, "-", nchan_reps, server="nchan-memory"),
    ]


# ``--only`` also takes these group names.
GROUPS = {
    "nchan": ("nchan_mem_fanout", "nchan_redis_fanout", "nchan_mem_idle", "nchan_redis_idle",
              "nchan_mem_hot_run", "nchan_mem_hot_run_10k"),
}


def expand_only(names: set[str]) -> set[str]:
    """Scenario keys of an ``--only`` list, its group names expanded."""
    out: set[str] = set()
    for name in names:
        out.update(GROUPS.get(name, (name,)))
    return out


def _git_rev() -> str:
    """The commit, and a fingerprint of the code the children run (service/, runner_bridge/),
    which also tells uncommitted versions apart."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                             capture_output=True, text=True, timeout=5, check=False)
        commit = out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    digest = hashlib.sha1()
    for package in ("service", "runner_bridge"):
        for path in sorted((ROOT / package).rglob("*.py")):
            digest.update(str(path.relative_to(ROOT)).encode())
            digest.update(path.read_bytes())
    return f"{commit} code:{digest.hexdigest()[:10]}"


def _meta(sz: Sizes, pin: bool, nofile: int) -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        uv_version: str | None = version("uvloop")
    except PackageNotFoundError:
        uv_version = None
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "mode": sz.mode,
        "reps": sz.reps,
        "git": _git_rev(),
        "python": sys.version.split()[0],
        "uvloop": uv_version,
        "machine": {"cpus": os.cpu_count(), "model": model, "kernel": platform.release()},
        "pinned": pin,
        "layout": ("service + redis-server on core 0; load generator, publisher and this "
                   "process on core 1") if pin else "not pinned (taskset missing or <2 cores)",
        "nofile": nofile,
        "sizes": {k: v for k, v in sz.__dict__.items()},
    }


async def wait_for_quiet(limit_s: float, busy_pct: float = QUIET_BUSY_PCT) -> dict[str, float]:
    """Wait (at most ``limit_s``) until the machine's cores are mostly idle: other work on a
    shared machine would otherwise be measured as ours. Returns what it saw last."""
    started = time.perf_counter()
    busy = 0.0
    while True:
        before = core_ticks()
        await asyncio.sleep(1.0)
        after = core_ticks()
        busy = max(
            100.0 * (after[c][0] - before[c][0]) / max(1, after[c][1] - before[c][1])
            for c in before
        )
        waited = time.perf_counter() - started
        if busy < busy_pct or waited >= limit_s:
            return {"busiest_core_pct": busy, "waited_s": waited}


class Quiet:
    """Waits for a quiet machine before each repetition, within a budget for the whole run."""

    def __init__(self, per_wait_s: float, budget_s: float) -> None:
        self.per_wait_s = per_wait_s
        self.left_s = budget_s

    async def wait(self) -> dict[str, float]:
        if self.per_wait_s <= 0:
            return {}
        seen = await wait_for_quiet(max(0.0, min(self.per_wait_s, self.left_s)))
        self.left_s -= seen["waited_s"]
        return seen


async def _one(entry: Entry, sz: Sizes, workdir: Path, pin: bool, quiet: Quiet) -> dict[str, Any]:
    calm = await quiet.wait()
    async with environment(workdir, loop=entry.loop, pin=pin, service_env=entry.service_env,
                           server=entry.server) as env:
        out = await asyncio.wait_for(entry.run(env, sz), entry.timeout_s)
    # The service starts from the work tree for every repetition: say which code it ran.
    out["detail"]["git"] = _git_rev()
    out["figures"]["busiest_core_pct_before"] = calm.get("busiest_core_pct")
    out["figures"]["quiet_wait_s"] = calm.get("waited_s")
    return out


def _say(text: str) -> None:
    print(text, flush=True)


async def run_suite(
    sz: Sizes, *, only: set[str] | None, out_dir: Path, profile_rate: int | None,
    profile_s: float,
) -> int:
    """Run the plan; print the table; write the JSON. Non-zero when correctness failed."""
    nofile = raise_nofile()
    pin = can_pin()
    if pin:
        os.sched_setaffinity(0, {1})
    results: dict[str, Any] = {"meta": _meta(sz, pin, nofile), "scenarios": {}}
    entries = [e for e in plan(sz) if e.reps > 0 and (only is None or e.key in only)]
    started = time.perf_counter()
    failures = 0
    quiet = Quiet(sz.quiet_wait_s, sz.quiet_budget_s)
    with tempfile.TemporaryDirectory(prefix="mantis-bench-") as tmp:
        workdir = Path(tmp)
        for entry in entries:
            reps: list[dict[str, Any]] = []
            details: list[Any] = []
            problems: list[str] = []
            errors: list[str] = []
            for rep in range(entry.reps):
                t0 = time.perf_counter()
                try:
                    out = await _one(entry, sz, workdir, pin, quiet)
                except Exception as exc:  # one broken scenario must not lose the others
                    errors.append(f"rep {rep + 1}: {type(exc).__name__}: {exc}"[:2000])
                    _say(f"[{entry.key} {rep + 1}/{entry.reps}] ERROR {errors[-1][:400]}")
                    traceback.print_exc(limit=3)
                    continue
                reps.append(out["figures"])
                details.append(out["detail"])
                problems += [f"{entry.key} rep {rep + 1}: {p}" for p in out["problems"]]
                flagged = f" PROBLEMS {out['problems']}" if out["problems"] else ""
                _say(f"[{entry.key} {rep + 1}/{entry.reps}] {time.perf_counter() - t0:.1f}s "
                     f"{_brief(out['figures'])}{flagged}")
            failures += len(problems) + len(errors)
            results["scenarios"][entry.key] = {
                "loop": entry.loop, "reps": reps, "median": medians(reps),
                "problems": problems, "errors": errors, "detail": details,
            }
        if profile_rate:
            os.makedirs(out_dir, exist_ok=True)
            profiles: dict[str, Any] = {}
            await quiet.wait()
            async with environment(workdir, loop="uvloop", pin=pin, service_env=LOAD_ENV) as env:
                profiles["fanout"] = await profile_fanout(env, sz, profile_rate, profile_s, out_dir)
            await quiet.wait()
            async with environment(workdir, loop="uvloop", pin=pin, service_env=LOAD_ENV) as env:
                profiles["storm"] = await profile_storm(env, sz, out_dir)
            results["profile"] = profiles
    revisions = sorted({
        d.get("git", "") for s in results["scenarios"].values() for d in s["detail"]
    } - {""})
    results["meta"]["git_per_rep"] = revisions
    rows = build_rows(results["scenarios"])
    results["table"] = rows_json(rows)
    results["elapsed_s"] = time.perf_counter() - started
    path = _write_json(out_dir, sz.mode, results)
    _say("")
    _say(f"mantis bench ({sz.mode}, {sz.reps} rep(s), medians; {results['meta']['layout']}; "
         f"{results['elapsed_s']:.0f}s)")
    _say(format_table(rows))
    if len(revisions) > 1:
        _say(f"WARNING: service/ or runner_bridge/ changed during the run: {', '.join(revisions)}")
    for name, profile in results.get("profile", {}).items():
        _say("")
        _say(format_profile(name, profile))
    _say(f"\nresults: {path}")
    if sz.mode == "smoke":
        failures += len(_missing_figures(results["scenarios"], entries))
    return 1 if failures else 0


def _write_json(out_dir: Path, mode: str, results: dict[str, Any]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = "" if mode == "full" else f"-{mode}"
    path = out_dir / f"{time.strftime('%Y%m%d-%H%M%S')}{suffix}.json"
    path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    return path


_BRIEF_KEYS = (
    "cpu_us_per_event", "p99_ms", "max_per_s_p99_50", "rss_kib_per_conn", "events_per_s",
    "pipelined_appends_per_s", "lines_per_s", "service_cmds_per_event_w1",
)


def _brief(figures: dict[str, Any]) -> str:
    parts = []
    for key in _BRIEF_KEYS:
        value = figures.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            parts.append(f"{key}={value:,.2f}")
    return " ".join(parts)


def _missing_figures(scenarios: dict[str, Any], entries: list[Entry]) -> list[str]:
    """Scenarios of the plan that produced no figures (the smoke run's check)."""
    missing = []
    for entry in entries:
        if not scenarios.get(entry.key, {}).get("reps"):
            missing.append(entry.key)
            _say(f"smoke: {entry.key} produced no figures")
    return missing
