"""Shared fixtures: a real redis-server, the embedded store, the service in-process or as a
child process. Integration tests run against both stores via the ``store_url`` fixture."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from runlog.calls import LogLimits
from runner_bridge import AsyncBridge, Bridge
from service.app import create_app
from service.auth import TokenTable
from service.embedded import EmbeddedStore
from service.settings import Settings

from .redis_server import free_port, running_redis

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
TOKENS = {"acme": "token-acme-secret", "other": "token-other-secret"}
TOKEN_SPEC = ",".join(f"{tenant}={token}" for tenant, token in TOKENS.items())


def fixture_path(name: str) -> Path:
    """A sample run of ``tests/fixtures`` (see its README)."""
    path = FIXTURES / name
    if not path.exists():
        pytest.fail(f"sample run {path} is missing")
    return path


@pytest.fixture(scope="session")
def real_redis_url() -> Iterator[str]:
    """One real redis-server for the session, on a free loopback port."""
    with running_redis() as (url, _proc):
        yield url


@pytest.fixture(scope="session")
def embedded_url() -> Iterator[str]:
    store = EmbeddedStore(port=0)
    url = store.start()
    yield url
    store.stop()


@pytest.fixture(params=["redis", "embedded"])
def store_url(request: pytest.FixtureRequest) -> str:
    """Each store, emptied: the real redis-server, and the embedded store."""
    name = "real_redis_url" if request.param == "redis" else "embedded_url"
    url: str = request.getfixturevalue(name)
    client = redis.Redis.from_url(url)
    client.flushall()
    client.close()
    return url


@pytest.fixture
def redis_url(real_redis_url: str) -> str:
    """The real redis-server only, emptied."""
    client = redis.Redis.from_url(real_redis_url)
    client.flushall()
    client.close()
    return real_redis_url


@pytest.fixture
def bridge(store_url: str) -> Iterator[Bridge]:
    with Bridge.from_url(store_url, limits=LogLimits()) as b:
        yield b


@pytest.fixture
async def abridge(store_url: str) -> AsyncIterator[AsyncBridge]:
    async with AsyncBridge.from_url(store_url, limits=LogLimits()) as b:
        yield b


@dataclass
class Service:
    """A running service under test: its base URL and how to make requests to it."""

    base: str
    client: Any  # pytest-aiohttp TestClient
    settings: Settings

    def headers(self, tenant: str = "acme", **extra: str) -> dict[str, str]:
        return {"X-Mantis-Token": TOKENS[tenant], **extra}


@pytest.fixture
def make_service(aiohttp_client: Callable[..., Any], store_url: str) -> Callable[..., Any]:
    """Start the app in-process on 127.0.0.1 over ``store_url``, with settings overrides."""

    async def start(**overrides: Any) -> Service:
        settings = Settings(tenant_tokens=TOKEN_SPEC, redis_url=store_url, **overrides)
        app = create_app(settings, TokenTable.parse(TOKEN_SPEC), store_url)
        client = await aiohttp_client(app, server_kwargs={"host": "127.0.0.1"})
        return Service(base=str(client.make_url("")).rstrip("/"), client=client, settings=settings)

    return start


@dataclass
class ServiceProcess:
    """``python -m service`` as a child process."""

    base: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path


def _wait_http(port: int, proc: subprocess.Popen[bytes], log: Path, deadline_s: float = 20) -> None:
    import socket

    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"service exited: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)  # waiting on a child process's port: no event to await
    raise RuntimeError(f"service did not listen in time: {log.read_text()[-2000:]}")


@pytest.fixture
def spawn_service(tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    """Start ``python -m service`` processes (killed at teardown) with env overrides;
    ``port`` reuses a port (a pod restarted in place), else a free one is taken."""
    started: list[ServiceProcess] = []

    def spawn(
        redis_url: str | None, *args: str, port: int | None = None, **env_overrides: str
    ) -> ServiceProcess:
        port = port or free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MANTIS_")}
        env.update(
            MANTIS_PORT=str(port),
            MANTIS_HOST="127.0.0.1",
            MANTIS_TENANT_TOKENS=TOKEN_SPEC,
            MANTIS_STATE_DIR=str(tmp_path / "state"),
            # No drain window unless a test asks for one: teardown's SIGTERM ends at once.
            MANTIS_DRAIN_S="0",
        )
        env.update(env_overrides)  # may replace the defaults above (MANTIS_TENANT_TOKENS)
        if redis_url:
            env["MANTIS_REDIS_URL"] = redis_url
        log = tmp_path / f"service-{port}-{len(started)}.log"
        handle = log.open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "service", *args],
            cwd=ROOT,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
        handle.close()
        sp = ServiceProcess(base=f"http://127.0.0.1:{port}", port=port, proc=proc, log=log)
        started.append(sp)
        _wait_http(port, proc, log)
        return sp

    yield spawn
    for sp in started:
        if sp.proc.poll() is None:
            sp.proc.terminate()
            try:
                sp.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                sp.proc.kill()
                sp.proc.wait()
