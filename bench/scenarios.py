"""The scenarios: each drives one ``Env`` and returns its figures and what went wrong.

Every scenario returns ``{"figures": {name: number}, "detail": {...}, "problems": [...]}``:
figures are what the report takes medians of; problems are correctness failures (gaps,
duplicates, clients that never finished), never slowness.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

from runlog.keys import log_key, meta_key, queue_key

from .env import TENANT, Env, command_delta
from .hooks import DELIVERIES_PER_RUN, register
from .procs import CLIENT_CORE, ROOT, Meter, pinned, rss_kb
from .sizes import Sizes
from .worker import Worker

Result = dict[str, Any]
Scenario = Callable[[Env, Sizes], Awaitable[Result]]

# A window in which the load generator used this share of its core or more may have
# measured the client, not the server: the report says so.
CLIENT_BOUND_PCT = 90.0
P99_TARGET_MS = 50.0
P99_REFERENCE_MS = 250.0
# Busy share of the server core taken by other processes above which a window is "noisy".
NOISY_PCT = 15.0
DRAIN_S = 2.0
# The call that carries a script, not a command of the script.
_SCRIPT_ENVELOPE = {"evalsha", "eval", "script|exists", "script|load"}


def _connect_problems(conn: Result) -> list[str]:
    if conn["failed"] or conn["ready"] < conn["clients"]:
        return [f"connect: {conn['ready']}/{conn['clients']} ready, {conn['failed']} failed "
                f"{conn['errors']}"]
    return []


def _done_problems(done: Result) -> list[str]:
    problems = []
    for key in ("gaps", "dups", "not_done", "failed", "bad_last_seq", "bad_event_count"):
        if done.get(key):
            problems.append(f"{key}={done[key]}")
    if done.get("errors"):
        problems.append(f"errors: {done['errors']}")
    if done["terminal"] < done["clients"]:
        problems.append(f"terminal event reached {done['terminal']}/{done['clients']} clients")
    return problems


async def measure_window(env: Env, meter: Meter, seconds: float) -> Result:
    """One measurement window: deliveries and latency (load generator), publisher rate,
    and the CPU and syscalls of every process from /proc."""
    before = meter.sample()
    await env.loadgen.call("window_start")
    await env.publisher.call("window_start")
    await asyncio.sleep(seconds)
    lg = await env.loadgen.call("window_end")
    pub = await env.publisher.call("window_end")
    cpu = Meter.window(before, meter.sample())
    events = max(1, lg["events"])
    return {
        "delivered_per_s": lg["events_per_s"],
        "appends_per_s": pub["rate"],
        "events": lg["events"],
        "p50_ms": lg["p50_ms"],
        "p90_ms": lg["p90_ms"],
        "p99_ms": lg["p99_ms"],
        "p999_ms": lg["p999_ms"],
        "max_ms": lg["max_ms"],
        "gaps": lg["gaps"],
        "dups": lg["dups"],
        "reconnects": lg["reconnects"],
        "cpu_us_per_event": (cpu["service_cpu_s"] + cpu["redis_cpu_s"]) / events * 1e6,
        "service_us_per_event": cpu["service_cpu_s"] / events * 1e6,
        "redis_us_per_event": cpu["redis_cpu_s"] / events * 1e6,
        "service_cpu_pct": cpu["service_cpu_pct"],
        "redis_cpu_pct": cpu["redis_cpu_pct"],
        "loadgen_cpu_pct": cpu["loadgen_cpu_pct"],
        "publisher_cpu_pct": cpu["publisher_cpu_pct"],
        # libuv writes with write()/writev() and reads with read(), which /proc/<pid>/io
        # counts; the default loop's send()/recv() are not counted there.
        "service_writes_per_event": cpu["service_syscw"] / events,
        "service_reads_per_event": cpu["service_syscr"] / events,
        "client_bound": cpu["loadgen_cpu_pct"] >= CLIENT_BOUND_PCT,
        "foreign_core0_pct": cpu["foreign_core0_pct"],
        "cpu_pressure_pct": cpu["cpu_pressure_pct"],
    }


def _step_passes(step: Result, offered: float, per_run_rate: float, p99_limit: float) -> bool:
    return (
        step["delivered_per_s"] >= 0.95 * offered
        and step["appends_per_s"] >= 0.95 * per_run_rate
        and step["p99_ms"] is not None
        and step["p99_ms"] <= p99_limit
        and step["gaps"] == 0
        and step["dups"] == 0
    )


async def _ladder_step(
    env: Env, meter: Meter, offered: int, clients_per_run: int, *, warmup_s: float,
    window_s: float, retries: int,
) -> Result:
    """One rung of the ladder. A rung that fails while other work of the machine kept the
    server core busy is tried again (bounded), after a pause that lets the backlog drain."""
    rate = offered / clients_per_run
    step: Result = {}
    for attempt in range(1 + retries):
        await env.publisher.call("set_rate", rate=rate)
        await asyncio.sleep(warmup_s)
        step = await measure_window(env, meter, window_s)
        step["offered_per_s"] = offered
        step["attempt"] = attempt + 1
        step["pass_p99_50"] = _step_passes(step, offered, rate, P99_TARGET_MS)
        step["pass_p99_250"] = _step_passes(step, offered, rate, P99_REFERENCE_MS)
        step["publisher_bound"] = step["appends_per_s"] < 0.95 * rate
        if step["pass_p99_50"] or step["foreign_core0_pct"] < NOISY_PCT:
            break
        await env.publisher.call("set_rate", rate=0.0)
        await asyncio.sleep(DRAIN_S)
    return step


async def fanout(env: Env, sz: Sizes) -> Result:
    """Runs x clients, live: CPU per delivered event at the first (reference) rate, then a
    rising ladder of rates until p99 passes 250 ms or deliveries fall behind."""
    runs = [f"fan-{i}" for i in range(sz.fan_runs)]
    await env.publisher.call("open", runs=runs)
    conn = await env.loadgen.call(
        "connect", groups=[{"run": r, "clients": sz.fan_clients} for r in runs],
        min_events=2, wait_s=120 * sz.timeout_scale,
    )
    problems = _connect_problems(conn)
    meter = env.meter()
    steps: list[Result] = []
    await env.publisher.call("start", runs=runs, rate=0.0)
    retries_left = 2 * sz.noisy_retries  # for the whole ladder, so noise cannot stretch it much
    for i, offered in enumerate(sz.fan_steps):
        step = await _ladder_step(
            env, meter, offered, sz.fan_clients,
            warmup_s=sz.fan_warmup_s if i == 0 else sz.step_warmup_s,
            window_s=sz.fan_window_s if i == 0 else sz.step_window_s,
            retries=min(sz.noisy_retries, retries_left),
        )
        retries_left -= step["attempt"] - 1
        steps.append(step)
        if not step["pass_p99_250"]:
            break
    stopped = await env.publisher.call("stop")
    await env.publisher.call("finish", runs=runs)
    done = await env.loadgen.call(
        "wait_done", expect_last=stopped["last_seq"], wait_s=180 * sz.timeout_scale
    )
    problems += _done_problems(done)

    def ladder_max(key: str) -> float:
        best = 0.0
        for step in steps:
            if not step[key]:
                break
            best = max(best, step["delivered_per_s"])
        return best

    first = steps[0]
    failed_step = next((s for s in steps if not s["pass_p99_50"]), None)
    figures = {
        "clients": conn["clients"],
        "connect_s": conn["elapsed_s"],
        "cpu_us_per_event": first["cpu_us_per_event"],
        "service_us_per_event": first["service_us_per_event"],
        "redis_us_per_event": first["redis_us_per_event"],
        "delivered_per_s": first["delivered_per_s"],
        "p50_ms": first["p50_ms"],
        "p99_ms": first["p99_ms"],
        "p999_ms": first["p999_ms"],
        "service_cpu_pct": first["service_cpu_pct"],
        "redis_cpu_pct": first["redis_cpu_pct"],
        "loadgen_cpu_pct": first["loadgen_cpu_pct"],
        "publisher_cpu_pct": first["publisher_cpu_pct"],
        "foreign_core0_pct": first["foreign_core0_pct"],
        "limit_foreign_core0_pct": failed_step["foreign_core0_pct"] if failed_step else None,
        "service_writes_per_event": first["service_writes_per_event"],
        "service_reads_per_event": first["service_reads_per_event"],
        "max_per_s_p99_50": ladder_max("pass_p99_50"),
        "max_per_s_p99_250": ladder_max("pass_p99_250"),
        "ladder_top_passed": steps[-1]["pass_p99_50"] and len(steps) == len(sz.fan_steps),
        "limit_client_bound": bool(failed_step and failed_step["client_bound"]),
        "limit_publisher_bound": bool(failed_step and failed_step["publisher_bound"]),
        "gaps": done["gaps"],
        "dups": done["dups"],
        "reconnects": done["reconnects"],
    }
    return {"figures": figures, "detail": {"connect": conn, "steps": steps, "done": done},
            "problems": problems}


async def idle(env: Env, sz: Sizes) -> Result:
    """RSS per idle streaming connection: (RSS with N idle streams - RSS before) / N."""
    runs = [f"idle-{i}" for i in range(sz.idle_runs)]
    await env.publisher.call("open", runs=runs)
    # One stream per run first, so the per-run cost (feed, subscription) is not counted
    # as per-connection cost.
    warm = await env.loadgen.call("connect", groups=[{"run": r, "clients": 1} for r in runs])
    await asyncio.sleep(0.5)
    rss_before = rss_kb(env.service.pid)
    redis_before = rss_kb(env.redis.pid)
    client_before = rss_kb(env.loadgen.pid)
    per_run, extra = divmod(sz.idle_conns, len(runs))
    groups = [{"run": r, "clients": per_run + (1 if i < extra else 0)} for i, r in enumerate(runs)]
    conn = await env.loadgen.call(
        "connect", groups=groups, min_events=2, concurrency=100, wait_s=600 * sz.timeout_scale
    )
    await asyncio.sleep(sz.idle_settle_s)
    rss_after = rss_kb(env.service.pid)
    redis_after = rss_kb(env.redis.pid)
    client_after = rss_kb(env.loadgen.pid)
    meter = env.meter()
    before = meter.sample()
    await asyncio.sleep(sz.idle_settle_s)
    quiet = Meter.window(before, meter.sample())
    await env.publisher.call("finish", runs=runs)
    done = await env.loadgen.call(
        "wait_done", expect_last={r: 0 for r in runs}, wait_s=180 * sz.timeout_scale
    )
    problems = _connect_problems(warm) + _connect_problems(conn) + _done_problems(done)
    n = conn["ready"] or 1
    figures = {
        "conns": conn["ready"],
        "connect_s": conn["elapsed_s"],
        "connects_per_s": conn["ready"] / conn["elapsed_s"] if conn["elapsed_s"] else 0.0,
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "rss_kib_per_conn": (rss_after - rss_before) / n,
        "redis_rss_kib_per_conn": (redis_after - redis_before) / n,
        # What a bare asyncio.Protocol connection costs in Python on the same loop: the load
        # generator's own RSS per client (protocol, transport, a small state object).
        "loadgen_rss_kib_per_conn": (client_after - client_before) / n,
        "idle_service_cpu_pct": quiet["service_cpu_pct"],
        "terminal_fanout_s": done["span_s"] - conn["elapsed_s"] if done["span_s"] else None,
        "gaps": done["gaps"],
        "dups": done["dups"],
    }
    return {"figures": figures, "detail": {"connect": conn, "done": done}, "problems": problems}


async def hot_run(env: Env, sz: Sizes) -> Result:
    """One run with many watchers at a modest row rate: the per-event fan-out burst."""
    await env.publisher.call("open", runs=["hot"])
    conn = await env.loadgen.call(
        "connect", groups=[{"run": "hot", "clients": sz.hot_clients}], min_events=2,
        wait_s=300 * sz.timeout_scale,
    )
    meter = env.meter()
    await env.publisher.call("start", runs=["hot"], rate=sz.hot_rate)
    await asyncio.sleep(sz.hot_warmup_s)
    window = await measure_window(env, meter, sz.hot_window_s)
    stopped = await env.publisher.call("stop")
    await env.publisher.call("finish", runs=["hot"])
    done = await env.loadgen.call(
        "wait_done", expect_last=stopped["last_seq"], wait_s=180 * sz.timeout_scale
    )
    problems = _connect_problems(conn) + _done_problems(done)
    figures = {
        "clients": conn["ready"],
        **{k: window[k] for k in (
            "delivered_per_s", "appends_per_s", "p50_ms", "p99_ms", "p999_ms", "max_ms",
            "cpu_us_per_event",
            "service_cpu_pct", "redis_cpu_pct", "loadgen_cpu_pct", "service_writes_per_event",
            "client_bound", "foreign_core0_pct",
        )},
        "gaps": done["gaps"],
        "dups": done["dups"],
    }
    return {"figures": figures, "detail": {"connect": conn, "window": window, "done": done},
            "problems": problems}


async def hot_run_big(env: Env, sz: Sizes) -> Result:
    """The hot run with ``hot_big_clients`` watchers (10,000 at full size)."""
    return await hot_run(env, replace(sz, hot_clients=sz.hot_big_clients))


async def replay_storm(env: Env, sz: Sizes) -> Result:
    """Many clients resume at once, at cursors spread across a finished run's log."""
    total = sz.storm_events
    rows = total - 4  # queued, running, the rows, complete, terminal
    opened = await env.publisher.call("open", runs=["storm"])
    epoch = opened["epochs"]["storm"]
    fill = await env.publisher.call("fill", run="storm", rows=rows, batch=500, limit_s=300)
    await env.publisher.call("finish", runs=["storm"])
    groups = []
    for i in range(sz.storm_clients):
        n = i * total // sz.storm_clients
        groups.append({
            "run": "storm",
            "cursor": f"{epoch}-{n:010d}" if n else "",
            "first_seq": max(1, n - 1),
            "expect_events": total - n,
        })
    meter = env.meter()
    before = meter.sample()
    conn = await env.loadgen.call(
        "connect", groups=groups, min_events=0, concurrency=128, wait_s=300 * sz.timeout_scale
    )
    done = await env.loadgen.call(
        "wait_done", expect_last={"storm": rows}, wait_s=600 * sz.timeout_scale
    )
    cpu = Meter.window(before, meter.sample())
    problems = _connect_problems(conn) + _done_problems(done)
    span = done["span_s"] or float("nan")
    events = done["events"]
    figures = {
        "clients": conn["clients"],
        "events": events,
        "span_s": span,
        "events_per_s": events / span,
        "service_us_per_event": cpu["service_cpu_s"] / max(1, events) * 1e6,
        "redis_us_per_event": cpu["redis_cpu_s"] / max(1, events) * 1e6,
        "service_cpu_pct": cpu["service_cpu_pct"],
        "redis_cpu_pct": cpu["redis_cpu_pct"],
        "loadgen_cpu_pct": cpu["loadgen_cpu_pct"],
        "client_bound": cpu["loadgen_cpu_pct"] >= CLIENT_BOUND_PCT,
        "foreign_core0_pct": cpu["foreign_core0_pct"],
        "fill_per_s": fill["per_s"],
        # 503 answers (with Retry-After) that clients of the storm got, and retried
        "unavailable_503": done["unavailable_503"],
        "gaps": done["gaps"],
        "dups": done["dups"],
    }
    return {"figures": figures, "detail": {"connect": conn, "done": done, "cpu": cpu},
            "problems": problems}


async def redis_per_pod(env: Env, sz: Sizes) -> Result:
    """Redis commands per appended event, and connections, of one pod at rising watcher counts.

    INFO commandstats counts every client's commands: the publisher's own per-event
    commands are measured first with no watcher, and subtracted.
    """
    events = sz.cmd_events
    runs = ["cmd-base", *(f"cmd-{w}" for w in sz.cmd_watchers)]
    await env.publisher.call("open", runs=runs)
    # Once first, so that one-time work (the bridge loading its script) is not counted.
    await env.publisher.call("fill", run="cmd-base", rows=events, batch=50)
    before = await env.command_counts()
    await env.publisher.call("fill", run="cmd-base", rows=events, batch=50)
    publisher_delta = command_delta(before, await env.command_counts())
    publisher_total = sum(publisher_delta.values())
    levels: list[Result] = []
    problems: list[str] = []
    for watchers in sz.cmd_watchers:
        run = f"cmd-{watchers}"
        pre_connect = await env.command_counts()
        conn = await env.loadgen.call(
            "connect", groups=[{"run": run, "clients": watchers}], min_events=2,
            wait_s=300 * sz.timeout_scale,
        )
        problems += _connect_problems(conn)
        connect_delta = command_delta(pre_connect, await env.command_counts())
        conns_idle = await env.service_connections()
        start = await env.command_counts()
        await env.publisher.call("fill", run=run, rows=events, batch=50)
        behind = await env.loadgen.call("wait_seq", run=run, seq=events, wait_s=120)
        if behind["behind"]:
            problems.append(
                f"{behind['behind']} of {watchers} watchers of {run} never got row {events}"
            )
        delta = command_delta(start, await env.command_counts())
        conns_live = await env.service_connections()
        service_delta = {
            k: v - publisher_delta.get(k, 0) for k, v in delta.items()
            if v != publisher_delta.get(k, 0)
        }
        levels.append({
            "watchers": watchers,
            "total_per_event": sum(delta.values()) / events,
            "service_per_event": (sum(delta.values()) - publisher_total) / events,
            "service_commands": service_delta,
            "connect_commands_per_client": sum(connect_delta.values()) / watchers,
            "connect_commands": connect_delta,
            "service_connections": max(conns_idle, conns_live),
        })
    finished = await env.publisher.call("finish", runs=runs[1:])
    done = await env.loadgen.call(
        "wait_done", expect_last=finished["last_seq"], wait_s=120 * sz.timeout_scale
    )
    problems += _done_problems(done)
    envelope = sum(v for k, v in publisher_delta.items() if k in _SCRIPT_ENVELOPE)
    figures: dict[str, Any] = {
        "publisher_per_event": publisher_total / events,
        # What the append script runs per row (the EVALSHA that carries it left out).
        "append_cmds_per_event": (publisher_total - envelope) / events,
        "append_evalsha_per_event": envelope / events,
    }
    for level in levels:
        w = level["watchers"]
        figures[f"service_cmds_per_event_w{w}"] = level["service_per_event"]
        figures[f"service_conns_w{w}"] = level["service_connections"]
        figures[f"connect_cmds_per_client_w{w}"] = level["connect_commands_per_client"]
    figures["gaps"] = done["gaps"]
    figures["dups"] = done["dups"]
    detail = {"publisher_commands": publisher_delta, "levels": levels, "done": done}
    return {"figures": figures, "detail": detail, "problems": problems}


async def bridge(env: Env, sz: Sizes) -> Result:
    """Runner side: AsyncBridge appends from one process, pipelined and one by one."""
    await env.publisher.call("open", runs=["bridge-pipe", "bridge-seq"])
    meter = env.meter()
    before = meter.sample()
    piped = await env.publisher.call(
        "fill", run="bridge-pipe", rows=sz.bridge_rows, batch=sz.bridge_batch, limit_s=300
    )
    cpu = Meter.window(before, meter.sample())
    one_by_one = await env.publisher.call(
        "sequential", run="bridge-seq", rows=sz.bridge_sequential, limit_s=300
    )
    length = await env.admin.xlen(log_key("bridge-pipe"))
    problems = []
    if length != sz.bridge_rows + 2:
        problems.append(f"bridge-pipe log holds {length} entries, expected {sz.bridge_rows + 2}")
    figures = {
        "pipelined_appends_per_s": piped["per_s"],
        "sequential_appends_per_s": one_by_one["per_s"],
        "publisher_us_per_append": cpu["publisher_cpu_s"] / sz.bridge_rows * 1e6,
        "redis_us_per_append": cpu["redis_cpu_s"] / sz.bridge_rows * 1e6,
        "publisher_cpu_pct": cpu["publisher_cpu_pct"],
        "redis_cpu_pct": cpu["redis_cpu_pct"],
    }
    return {"figures": figures, "detail": {"pipelined": piped, "sequential": one_by_one},
            "problems": problems}


RUNS_SUBMITS_TARGET = 2_000.0
RUNS_POLLS_TARGET = 10_000.0


async def runs(env: Env, sz: Sizes) -> Result:
    """The runs API on one pod: closed-loop submits, then cheap polls of the runs made."""
    meter = env.meter()
    before = meter.sample()
    commands0 = await env.command_counts()
    submits = await env.loadgen.call(
        "http_load", kind="submit", seconds=sz.runs_window_s, concurrency=sz.runs_concurrency,
        keep_ids=sz.runs_poll_targets, limit_s=60 + sz.runs_window_s * 4,
    )
    submit_cpu = Meter.window(before, meter.sample())
    commands1 = await env.command_counts()
    queued = await env.admin.xlen(queue_key())
    before = meter.sample()
    polls = await env.loadgen.call(
        "http_load", kind="poll", seconds=sz.runs_window_s, concurrency=sz.runs_concurrency,
        run_ids=submits["run_ids"], limit_s=60 + sz.runs_window_s * 4,
    )
    poll_cpu = Meter.window(before, meter.sample())
    commands2 = await env.command_counts()
    problems = []
    accepted = submits["statuses"].get("202", 0)
    if accepted != submits["requests"] or submits["errors"]:
        problems.append(f"submits: {submits['statuses']} {submits['errors']}")
    if queued != accepted:
        problems.append(f"queue holds {queued} runs after {accepted} accepted submits")
    if polls["statuses"].get("200", 0) != polls["requests"] or polls["errors"]:
        problems.append(f"polls: {polls['statuses']} {polls['errors']}")
    submit_cmds = command_delta(commands0, commands1)
    poll_cmds = command_delta(commands1, commands2)
    figures = {
        "submits_per_s": submits["per_s"],
        "submit_p50_ms": submits["p50_ms"],
        "submit_p99_ms": submits["p99_ms"],
        "polls_per_s": polls["per_s"],
        "poll_p50_ms": polls["p50_ms"],
        "poll_p99_ms": polls["p99_ms"],
        "submits_target_met": submits["per_s"] >= RUNS_SUBMITS_TARGET
        and (submits["p99_ms"] or 1e9) <= P99_TARGET_MS,
        "polls_target_met": polls["per_s"] >= RUNS_POLLS_TARGET
        and (polls["p99_ms"] or 1e9) <= P99_TARGET_MS,
        "redis_cmds_per_submit": sum(submit_cmds.values()) / max(1, submits["requests"]),
        "redis_cmds_per_poll": sum(poll_cmds.values()) / max(1, polls["requests"]),
        "submit_service_cpu_pct": submit_cpu["service_cpu_pct"],
        "poll_service_cpu_pct": poll_cpu["service_cpu_pct"],
        "poll_loadgen_cpu_pct": poll_cpu["loadgen_cpu_pct"],
        "client_bound": max(submit_cpu["loadgen_cpu_pct"], poll_cpu["loadgen_cpu_pct"])
        >= CLIENT_BOUND_PCT,
        "foreign_core0_pct": max(submit_cpu["foreign_core0_pct"], poll_cpu["foreign_core0_pct"]),
    }
    submits.pop("run_ids", None)
    polls.pop("run_ids", None)
    detail = {"submits": submits, "polls": polls, "submit_commands": submit_cmds,
              "poll_commands": poll_cmds}
    return {"figures": figures, "detail": detail, "problems": problems}


def tail_available() -> str | None:
    """None when ``python -m runner_bridge tail`` exists, else why not."""
    if not (ROOT / "runner_bridge" / "__main__.py").exists():
        return "runner_bridge/__main__.py does not exist yet"
    probe = subprocess.run(
        [sys.executable, "-m", "runner_bridge", "tail", "--help"], cwd=ROOT,
        capture_output=True, timeout=30, check=False,
    )
    if probe.returncode != 0:
        return f"`python -m runner_bridge tail --help` exited {probe.returncode}"
    return None


async def tail(env: Env, sz: Sizes) -> Result:
    """``python -m runner_bridge tail FILE``: lines published per second from one file."""
    why_not = await asyncio.to_thread(tail_available)
    if why_not is not None:
        return {"figures": {"measured": False}, "detail": {"not_measured": why_not}, "problems": []}
    lines = sz.tail_lines
    run_id = f"tail-{os.getpid()}-{time.monotonic_ns()}"
    with tempfile.TemporaryDirectory(prefix="mantis-bench-tail-") as tmp:
        path = Path(tmp) / "reasoning.jsonl"
        with path.open("wb") as f:
            f.write(b'{"kind": "phase", "phase": "running"}\n')
            for k in range(1, lines + 1):
                f.write(orjson.dumps({"kind": "step", "seq": k, "pad": "x" * 40}) + b"\n")
            f.write(b'{"kind": "phase", "phase": "complete"}\n')
        env_vars = {k: v for k, v in os.environ.items() if not k.startswith("MANTIS_")}
        env_vars["MANTIS_REDIS_URL"] = env.redis.url
        argv = [sys.executable, "-m", "runner_bridge", "tail", str(path),
                "--run-id", run_id, "--tenant", TENANT]
        core = CLIENT_CORE if env.pinned else None
        started = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            *pinned(core, argv), cwd=ROOT, env=env_vars,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 300 * sz.timeout_scale)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return {"figures": {"measured": False},
                    "detail": {"not_measured": "tail did not exit within the time limit"},
                    "problems": ["tail did not exit on the terminal phase line"]}
        wall = time.perf_counter() - started
    if proc.returncode != 0:
        return {"figures": {"measured": False},
                "detail": {"not_measured": f"tail exited {proc.returncode}: {err.decode()[-500:]}"},
                "problems": [f"tail exited {proc.returncode}"]}
    key = log_key(run_id)
    length = await env.admin.xlen(key)
    first = await env.admin.xrange(key, "3-0", "+", count=1)
    last = await env.admin.xrevrange(key, "+", "-", count=1)
    phase = await env.admin.hget(meta_key(run_id), "phase")
    problems = []
    expected = lines + 4  # queued, running, rows, complete, terminal
    if length != expected:
        problems.append(f"tail run log holds {length} entries, expected {expected}")
    if phase != b"complete":
        problems.append(f"tail run phase is {phase!r}, expected complete")
    in_log_s = None
    if first and last and first[0][1] and last[0][1]:
        in_log_s = (int(last[0][1][b"t"]) - int(first[0][1][b"t"])) / 1e6
    figures = {
        "measured": True,
        "lines": lines,
        "wall_s": wall,
        "lines_per_s_wall": lines / wall,
        "lines_per_s": lines / in_log_s if in_log_s else None,
    }
    return {"figures": figures,
            "detail": {"stdout": out.decode()[-500:], "stderr": err.decode()[-500:]},
            "problems": problems}


async def webhooks(env: Env, sz: Sizes) -> Result:
    """Webhooks of one pod to a local receiver (2 endpoints, both event types, 8 deliveries
    per run) while a hot stream runs. First paced (runs finishing at a steady rate): the
    deliveries/s and the stream's p99 meanwhile; then a backlog, sent as fast as the pod
    can: its deliveries/s. The receiver and the run maker are load processes of their own
    on the load core."""
    per_run = DELIVERIES_PER_RUN * 2
    workdir = env.service.log.parent
    core = CLIENT_CORE if env.pinned else None
    receiver = await Worker.start("hook-receiver", "bench.hooks", [], core=core, workdir=workdir)
    maker = await Worker.start("hook-maker", "bench.hooks", [], core=core, workdir=workdir)
    url = env.redis.url
    try:
        base = (await receiver.call("listen"))["base"]
        for n in range(2):
            await register(env.admin, TENANT, f"{base}/hook/{n}")
        # A first run, awaited: the pod has seen the endpoints (it looks every 2 s).
        await maker.call("finish_runs", url=url, tenant=TENANT, count=1, prefix="hook-w")
        await receiver.call("wait_for", count=per_run, wait_s=30 * sz.timeout_scale)
        await env.publisher.call("open", runs=["hot"])
        conn = await env.loadgen.call(
            "connect", groups=[{"run": "hot", "clients": sz.hook_stream_clients}],
            min_events=2, wait_s=300 * sz.timeout_scale,
        )
        meter = env.meter()
        await env.publisher.call("start", runs=["hot"], rate=sz.hot_rate)
        paced_count = int(sz.hook_paced_runs_per_s * (sz.hot_warmup_s + sz.hook_window_s + 1))
        paced = asyncio.create_task(maker.call(
            "finish_runs", url=url, tenant=TENANT, count=paced_count, prefix="hook-p",
            rate=sz.hook_paced_runs_per_s, wait_s=paced_count / sz.hook_paced_runs_per_s * 3,
        ))
        await asyncio.sleep(sz.hot_warmup_s)
        start = await receiver.call("window_start")
        window = await measure_window(env, meter, sz.hook_window_s)
        end = await receiver.call("window_end")
        paced_made = (await paced)["per_s"]
        await receiver.call("wait_for", count=(1 + paced_count) * per_run,
                            wait_s=60 * sz.timeout_scale)
        # The backlog: every run finished first, then the pod sends as fast as it can.
        made = await maker.call("finish_runs", url=url, tenant=TENANT, count=sz.hook_runs,
                                prefix="hook-b", wait_s=300 * sz.timeout_scale)
        expected = (1 + paced_count + sz.hook_runs) * per_run
        got = await receiver.call("wait_for", count=expected, wait_s=120 * sz.timeout_scale)
        span = got["last_t"] - made["t0"]
        stopped = await env.publisher.call("stop")
        await env.publisher.call("finish", runs=["hot"])
        done = await env.loadgen.call(
            "wait_done", expect_last=stopped["last_seq"], wait_s=180 * sz.timeout_scale
        )
    finally:
        await receiver.stop()
        await maker.stop()
    problems = _connect_problems(conn) + _done_problems(done)
    if got["distinct"] != expected:
        problems.append(f"webhooks: {got['distinct']}/{expected} distinct deliveries")
    if got["dups"]:
        problems.append(f"webhooks: {got['dups']} duplicate deliveries")
    figures = {
        "deliveries_per_s": end["count"] / max(1e-9, end["t"] - start["t"]),
        "offered_per_s": sz.hook_paced_runs_per_s * per_run,
        "paced_runs_per_s": paced_made,
        "max_deliveries_per_s": sz.hook_runs * per_run / max(1e-9, span),
        "deliveries": got["distinct"],
        "duplicates": got["dups"],
        "backlog_runs_made_per_s": made["per_s"],
        "stream_clients": conn["ready"],
        **{k: window[k] for k in (
            "p50_ms", "p99_ms", "max_ms", "service_cpu_pct", "redis_cpu_pct",
            "loadgen_cpu_pct", "client_bound", "foreign_core0_pct",
        )},
        "gaps": done["gaps"],
        "dups": done["dups"],
    }
    return {"figures": figures, "detail": {"connect": conn, "window": window, "done": done},
            "problems": problems}
