"""Start a throwaway real ``redis-server`` on a free loopback port for the tests."""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(port: int, proc: subprocess.Popen[bytes], deadline_s: float = 10.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                # -NOAUTH: up, and started with --requirepass.
                if sock.recv(16).startswith((b"+PONG", b"-NOAUTH")):
                    return
        except OSError:
            pass
        time.sleep(0.02)  # polling a child process's port: there is no event to await
    raise RuntimeError("redis-server did not answer PING in time")


@contextmanager
def running_redis(
    port: int | None = None, *extra: str
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A real redis-server on 127.0.0.1 (no persistence); yields (url, process)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install -y redis-server)")
    port = port or free_port()
    workdir = Path(tempfile.mkdtemp(prefix="mantis-redis-"))
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            "--logfile",
            str(workdir / "redis.log"),
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_ready(port, proc)
        yield f"redis://127.0.0.1:{port}/0", proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def running_cluster(
    nodes: int = 3, replicas: int = 0, node_timeout_ms: int = 15000
) -> Iterator[str]:
    """A real Redis Cluster of ``nodes`` masters (each with ``replicas`` replicas) on
    loopback; yields the URL of one master."""
    ports = [_cluster_port() for _ in range(nodes * (1 + replicas))]
    with contextlib.ExitStack() as stack:
        for port in ports:
            stack.enter_context(
                running_redis(port, "--cluster-enabled", "yes",
                              "--cluster-config-file", f"nodes-{port}.conf",
                              "--cluster-node-timeout", str(node_timeout_ms))
            )
        subprocess.run(
            ["redis-cli", "--cluster", "create",
             *[f"127.0.0.1:{port}" for port in ports], "--cluster-yes",
             "--cluster-replicas", str(replicas)],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30,
        )
        _wait_cluster_ok(ports[0])
        yield f"redis://127.0.0.1:{ports[0]}/0"


def _cluster_port() -> int:
    # A cluster node also listens on port + 10000 (its bus), so both must be free and valid.
    for _ in range(200):
        port = random.randint(20000, 40000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def _wait_cluster_ok(port: int, deadline_s: float = 15.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        out = subprocess.run(
            ["redis-cli", "-p", str(port), "cluster", "info"],
            capture_output=True, text=True, timeout=5, check=False,
        ).stdout
        if "cluster_state:ok" in out:
            return
        time.sleep(0.1)  # the cluster converges over its bus: nothing to await from here
    raise RuntimeError("redis cluster did not reach cluster_state:ok")
