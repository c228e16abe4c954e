"""Profile the service under load with py-spy (``python -m bench --profile``).

py-spy samples the running service from outside with ``--native``, so time spent in C
(uvloop, hiredis, the libc ``write`` that enters the kernel) shows as such instead of being
charged to the Python frame that called it. Two loads are profiled: the live fan-out (100
runs x 10 clients at a fixed rate) and the replay storm. py-spy's raw output (collapsed
stacks) is summarised as the top functions by own and by total time; samples whose leaf is
the loop's ``epoll`` wait are idle and left out.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from .env import Env
from .procs import Meter
from .scenarios import measure_window
from .sizes import Sizes

_LINE_NO = re.compile(r":\d+\)$")
SAMPLE_HZ = 250
STORM_HZ = 100
SCAFFOLD_PCT = 95.0


def py_spy() -> str | None:
    """The py-spy binary: next to this Python first (the venv), else on PATH."""
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def _frame(raw: str) -> str:
    """A frame without its line number, so one function's samples add up."""
    return _LINE_NO.sub(")", raw.strip())


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)


def _nonempty(path: Path) -> bool:
    return path.exists() and path.stat().st_size > 0


def summarise(collapsed: Path, top: int = 40) -> dict[str, Any]:
    """Top functions by own samples and by inclusive samples, from py-spy's raw format."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    idle = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_raw = line.rpartition(" ")
        if not stack or not count_raw.isdigit():
            continue
        count = int(count_raw)
        frames = [_frame(f) for f in stack.split(";") if f]
        while frames and frames[0].startswith(("process ", "thread ")):
            frames = frames[1:]
        if not frames:
            continue
        if frames[-1].startswith(("epoll_wait", "epoll_pwait")):
            idle += count
            continue
        samples += count
        own[frames[-1]] += count
        for name in set(frames):
            total[name] += count

    def table(counter: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"function": name, "samples": n, "pct": 100.0 * n / samples if samples else 0.0}
            for name, n in counter.most_common(top)
        ]

    return {"samples": samples, "idle_samples": idle, "own": table(own), "total": table(total)}


@contextlib.asynccontextmanager
async def recording(pid: int, out: Path, hz: int = SAMPLE_HZ) -> AsyncIterator[dict[str, Any]]:
    """py-spy records ``pid`` for the body of the block; the summary lands in the dict."""
    result: dict[str, Any] = {"hz": hz}
    binary = py_spy()
    _remove(out)  # never summarise an earlier run's file
    if binary is None:
        result["error"] = "py-spy is not installed (.venv/bin/pip install py-spy)"
        yield result
        return
    proc = await asyncio.create_subprocess_exec(
        binary, "record", "--pid", str(pid), "--rate", str(hz), "--native",
        "--format", "raw", "--output", str(out),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    try:
        await asyncio.sleep(0.5)  # attached before the load starts
        yield result
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        try:
            _out, err = await asyncio.wait_for(proc.communicate(), 60)
        except TimeoutError:
            proc.kill()
            _out, err = await proc.communicate()
    summary = summarise(out) if _nonempty(out) else None
    if summary is not None:
        result["raw"] = str(out)
        result["summary"] = summary
    else:
        result["error"] = f"py-spy exited {proc.returncode}: {err.decode()[-400:]}"


async def profile_fanout(
    env: Env, sz: Sizes, rate: int, seconds: float, out_dir: Path
) -> dict[str, Any]:
    """Fan-out at ``rate`` deliveries/s with py-spy recording the service for ``seconds``."""
    runs = [f"prof-{i}" for i in range(sz.fan_runs)]
    await env.publisher.call("open", runs=runs)
    await env.loadgen.call("connect", groups=[{"run": r, "clients": sz.fan_clients} for r in runs])
    await env.publisher.call("start", runs=runs, rate=rate / sz.fan_clients)
    await asyncio.sleep(1.0)
    meter = env.meter()
    async with recording(env.service.pid, out_dir / "profile-fanout.txt") as result:
        result["window"] = await measure_window(env, meter, seconds)
    stopped = await env.publisher.call("stop")
    await env.publisher.call("finish", runs=runs)
    done = await env.loadgen.call("wait_done", expect_last=stopped["last_seq"], wait_s=120)
    result.update(load=f"fan-out {rate:,} deliveries/s offered", gaps=done["gaps"],
                  dups=done["dups"])
    return result


async def profile_storm(env: Env, sz: Sizes, out_dir: Path, waves: int = 5) -> dict[str, Any]:
    """The replay storm, ``waves`` times over, with py-spy recording the service throughout."""
    total = sz.storm_events
    opened = await env.publisher.call("open", runs=["storm"])
    epoch = opened["epochs"]["storm"]
    await env.publisher.call("fill", run="storm", rows=total - 4, batch=500, limit_s=300)
    await env.publisher.call("finish", runs=["storm"])
    groups = []
    for i in range(sz.storm_clients):
        n = i * total // sz.storm_clients
        groups.append({"run": "storm", "cursor": f"{epoch}-{n:010d}" if n else "",
                       "first_seq": max(1, n - 1), "expect_events": total - n})
    meter = env.meter()
    # Native sampling pauses the process: a low rate keeps the storm close to its real pace.
    async with recording(env.service.pid, out_dir / "profile-storm.txt", STORM_HZ) as result:
        before = meter.sample()
        for _ in range(waves):
            await env.loadgen.call("connect", groups=groups, min_events=0, concurrency=128,
                                   wait_s=300)
            done = await env.loadgen.call(
                "wait_done", expect_last={"storm": total - 4}, wait_s=600
            )
        cpu = Meter.window(before, meter.sample())
    result["window"] = {"delivered_per_s": done["events"] / cpu["wall_s"],
                        "service_cpu_pct": cpu["service_cpu_pct"]}
    result.update(load=f"replay storm, {sz.storm_clients} clients, {waves} waves", done=done)
    return result


def format_profile(name: str, profile: dict[str, Any], top: int = 15) -> str:
    """The profile's top entries as text."""
    if "error" in profile:
        return f"profile {name}: {profile['error']}"
    summary = profile["summary"]
    w = profile["window"]
    lines = [
        f"py-spy on the service, {profile['load']}: {w['delivered_per_s']:,.0f} events/s "
        f"delivered, service {w['service_cpu_pct']:.0f}% CPU, {summary['samples']} samples "
        f"at {profile['hz']} Hz, --native (idle excluded)",
        f"  {'own %':>6}  {'function':58} | {'total %':>7}  function",
    ]
    # Frames on nearly every stack (the loop, runpy, main) say nothing: leave them out.
    own = summary["own"][:top]
    total = [row for row in summary["total"] if row["pct"] < SCAFFOLD_PCT][:top]
    for i in range(max(len(own), len(total))):
        left = f"{own[i]['pct']:6.1f}  {own[i]['function'][:58]:58}" if i < len(own) else " " * 66
        right = f"{total[i]['pct']:7.1f}  {total[i]['function'][:60]}" if i < len(total) else ""
        lines.append(f"  {left} | {right}")
    return "\n".join(lines)
