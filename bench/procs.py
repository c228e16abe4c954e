"""Child processes of the benchmark (redis-server, the service) and what /proc says of them."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVER_CORE = 0
CLIENT_CORE = 1
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def can_pin() -> bool:
    """True when ``taskset`` exists and this process may run on cores 0 and 1."""
    return shutil.which("taskset") is not None and {0, 1} <= os.sched_getaffinity(0)


def pinned(core: int | None, argv: list[str]) -> list[str]:
    """``argv`` run through ``taskset -c core`` (``taskset`` execs: the pid stays the same)."""
    if core is None:
        return argv
    return ["taskset", "-c", str(core), *argv]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def raise_nofile() -> int:
    """Lift the soft open-file limit to the hard one (children inherit it); returns it."""
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return int(hard)


# -- /proc ---------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def rss_kb(pid: int) -> int:
    """Resident set size in KiB (VmRSS)."""
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1])
    return 0


def io_syscalls(pid: int) -> tuple[int, int]:
    """(read-class, write-class) syscall counts from /proc/<pid>/io; (0, 0) if unreadable."""
    try:
        with open(f"/proc/{pid}/io", "rb") as f:
            values = dict(line.split(b":", 1) for line in f.read().splitlines())
        return int(values[b"syscr"]), int(values[b"syscw"])
    except (OSError, KeyError, ValueError):
        return 0, 0


def local_ports_to(pid: int, remote_port: int) -> set[int]:
    """Local ports of ``pid``'s TCP sockets connected to 127.0.0.1:``remote_port``."""
    inodes: set[str] = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) < 10 or cols[9] not in inodes:
                continue
            local, remote, state = cols[1], cols[2], cols[3]
            if state == "01" and int(remote.rsplit(":", 1)[1], 16) == remote_port:
                ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


def core_ticks() -> dict[int, tuple[int, int]]:
    """Per core: (busy, total) clock ticks since boot, from /proc/stat."""
    out: dict[int, tuple[int, int]] = {}
    with open("/proc/stat", "rb") as f:
        for line in f:
            if not line.startswith(b"cpu") or line.startswith(b"cpu "):
                continue
            name, *values = line.split()
            ticks = [int(v) for v in values[:8]]
            idle = ticks[3] + ticks[4]
            out[int(name[3:])] = (sum(ticks) - idle, sum(ticks))
    return out


def cpu_pressure_us() -> int:
    """Total microseconds in which some task waited for a CPU (PSI), 0 if unavailable."""
    try:
        with open("/proc/pressure/cpu", "rb") as f:
            some = f.readline().split()
        return int(some[-1].split(b"=")[1])
    except (OSError, IndexError, ValueError):
        return 0


@dataclass(frozen=True)
class Sample:
    """CPU seconds and syscall counts of each watched process at one moment, and how busy
    each core was (which shows load from other processes of the machine)."""

    wall: float
    cpu: dict[str, float]
    io: dict[str, tuple[int, int]]
    cores: dict[int, tuple[int, int]]
    pressure_us: int


class Meter:
    """Samples /proc for a set of named processes; the difference of two samples is a window."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids

    def sample(self) -> Sample:
        return Sample(
            wall=time.perf_counter(),
            cpu={name: cpu_seconds(pid) for name, pid in self.pids.items()},
            io={name: io_syscalls(pid) for name, pid in self.pids.items()},
            cores=core_ticks(),
            pressure_us=cpu_pressure_us(),
        )

    @staticmethod
    def window(a: Sample, b: Sample) -> dict[str, float]:
        """CPU seconds and per-cent of one core of each process between two samples."""
        wall = b.wall - a.wall
        out: dict[str, float] = {"wall_s": wall}
        for name in a.cpu:
            used = b.cpu[name] - a.cpu[name]
            out[f"{name}_cpu_s"] = used
            out[f"{name}_cpu_pct"] = 100.0 * used / wall if wall > 0 else 0.0
            out[f"{name}_syscr"] = b.io[name][0] - a.io[name][0]
            out[f"{name}_syscw"] = b.io[name][1] - a.io[name][1]
        for core, (busy_b, total_b) in b.cores.items():
            busy_a, total_a = a.cores.get(core, (busy_b, total_b))
            span = total_b - total_a
            out[f"core{core}_busy_pct"] = 100.0 * (busy_b - busy_a) / span if span else 0.0
        # Busy time on the server core that is neither the service nor Redis: other work of
        # a shared machine, which makes latency and throughput figures pessimistic.
        ours = out.get("service_cpu_pct", 0.0) + out.get("redis_cpu_pct", 0.0)
        out["foreign_core0_pct"] = max(0.0, out.get(f"core{SERVER_CORE}_busy_pct", 0.0) - ours)
        out["cpu_pressure_pct"] = (b.pressure_us - a.pressure_us) / 1e4 / wall if wall else 0.0
        return out


# -- redis-server --------------------------------------------------------------------


@dataclass
class RedisProc:
    url: str
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.proc.pid


def _wait_redis(port: int, proc: subprocess.Popen[bytes], deadline_s: float = 10.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        time.sleep(0.02)  # polling a child's port: there is no event to await
    raise RuntimeError("redis-server did not answer PING in time")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def running_redis(workdir: Path, core: int | None) -> Iterator[RedisProc]:
    """A throwaway redis-server on a free loopback port, no persistence (a small copy of
    tests/redis_server.py, which the bench does not import: it adds pinning)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install -y redis-server)")
    port = free_port()
    rdir = workdir / f"redis-{port}"
    rdir.mkdir(parents=True)
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(rdir), "--logfile", str(rdir / "redis.log")]
    proc = subprocess.Popen(
        pinned(core, argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_redis(port, proc)
        yield RedisProc(url=f"redis://127.0.0.1:{port}/0", port=port, proc=proc)
    finally:
        _stop(proc)


# -- the service ---------------------------------------------------------------------


@dataclass
class ServiceProc:
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


async def http_status(port: int, path: str, limit_s: float = 2.0) -> int:
    """Status code of a plain GET on 127.0.0.1:port (0 if it fails)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), limit_s)
    except (OSError, TimeoutError):
        return 0
    try:
        request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        writer.write(request.encode())
        line = await asyncio.wait_for(reader.readline(), limit_s)
        parts = line.split()
        return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    except (OSError, TimeoutError):
        return 0
    finally:
        writer.close()


@contextmanager
def service_process(
    workdir: Path, redis_url: str, tokens: str, *, loop: str, core: int | None, env: dict[str, str]
) -> Iterator[ServiceProc]:
    """``python -m service --loop LOOP`` on a free port (the caller awaits ``wait_service``)."""
    port = free_port()
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("MANTIS_")}
    child_env.update(
        MANTIS_REDIS_URL=redis_url,
        MANTIS_TENANT_TOKENS=tokens,
        MANTIS_HOST="127.0.0.1",
        MANTIS_PORT=str(port),
        MANTIS_STATE_DIR=str(workdir / "state"),
        PYTHONUNBUFFERED="1",
        **env,
    )
    log = workdir / f"service-{port}.log"
    with log.open("wb") as handle:
        proc = subprocess.Popen(
            pinned(core, [sys.executable, "-m", "service", "--loop", loop]),
            cwd=ROOT, env=child_env, stdout=handle, stderr=subprocess.STDOUT,
        )
    try:
        yield ServiceProc(port=port, proc=proc, log=log)
    finally:
        _stop(proc)


async def wait_service(service: ServiceProc, deadline_s: float = 30.0) -> None:
    """Until /readyz answers 200 (listening and its store reachable)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if service.proc.poll() is not None:
            raise RuntimeError(f"service exited: {service.log_tail()}")
        if await http_status(service.port, "/readyz") == 200:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"service did not become healthy: {service.log_tail()}")
