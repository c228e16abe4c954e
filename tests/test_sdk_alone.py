"""The SDK installs and works on its own: no Redis client, no web server, no fake store.

A fresh virtual environment gets exactly what an SDK user installs (the hashed
``requirements/sdk.lock`` and the project with no extras); the service's libraries must
then be missing there, and ``MantisClient`` in that environment's Python still streams a
run, live, from a real ``python -m service`` on a real redis-server.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import venv
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pytest

from runlog.calls import LogLimits
from runner_bridge import Bridge

from .conftest import ROOT, TOKENS, ServiceProcess

# What the service and the runner need, and an SDK user must not be made to install.
NOT_FOR_SDK = ["aiohttp", "aiohttp_sse", "redis", "hiredis", "fakeredis", "lupa", "orjson"]
# Our own packages that need those: importing the SDK must not import them either.
OURS_NOT_FOR_SDK = ["runlog", "runner_bridge", "service"]

PROBE = """
import importlib, json, sys
result = {}
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except ImportError:
        result[name] = False
    else:
        result[name] = True
print(json.dumps(result))
"""

# Streams one run with the SDK and prints each event as a JSON line, flushed at once, so
# the test can append more rows once the client is reading live.
STREAM = """
import json, sys
from mantis_agent.client import MantisClient

with MantisClient.from_env() as client:
    for event in client.stream_events(sys.argv[1]):
        print(json.dumps(event), flush=True)
"""


def _copy_source(dest: Path) -> Path:
    """The files a build needs, copied, so that building writes nothing into the repo."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md", "setup.cfg"):
        shutil.copy2(ROOT / name, dest / name)
    for package in ("mantis_agent", "runlog", "runner_bridge", "service"):
        shutil.copytree(
            ROOT / package, dest / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    return dest


def _run(*argv: str | Path, cwd: Path, timeout: float = 240) -> str:
    done = subprocess.run(
        [str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        pytest.fail(f"{argv[:4]} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


@pytest.fixture(scope="module")
def sdk_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Python of a fresh venv holding only the locked SDK set and the project."""
    base = tmp_path_factory.mktemp("sdk-alone")
    env_dir = base / "venv"
    venv.create(env_dir, with_pip=True, clear=True)
    python = env_dir / "bin" / "python"
    _run(python, "-m", "pip", "install", "-q", "--require-hashes", "--no-deps",
         "-r", ROOT / "requirements" / "sdk.lock", cwd=base)
    _run(python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         _copy_source(base / "src"), cwd=base)
    return python


def test_importing_the_sdk_loads_no_service_library() -> None:
    # A fresh interpreter (this one has imported everything already).
    code = (
        "import sys, mantis_agent, mantis_agent.client, mantis_agent.aio\n"
        "print(sorted({m.split('.')[0] for m in sys.modules}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    loaded = set(json.loads(out.replace("'", '"')))
    assert "httpx" in loaded
    assert loaded.isdisjoint(NOT_FOR_SDK + OURS_NOT_FOR_SDK), loaded & set(
        NOT_FOR_SDK + OURS_NOT_FOR_SDK
    )


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sdk_alone_lacks_the_service_libraries(sdk_python: Path, tmp_path: Path) -> None:
    found = json.loads(
        _run(sdk_python, "-c", PROBE, *NOT_FOR_SDK, "httpx", "httpx_sse", "mantis_agent.client",
             cwd=tmp_path)
    )
    assert {name: found[name] for name in NOT_FOR_SDK} == dict.fromkeys(NOT_FOR_SDK, False)
    assert found["httpx"] and found["httpx_sse"] and found["mantis_agent.client"]
    # Installed from the lock, pinned: the same httpx as requirements/sdk.lock names.
    lock = (ROOT / "requirements" / "sdk.lock").read_text()
    version = _run(sdk_python, "-c", "import httpx; print(httpx.__version__)", cwd=tmp_path)
    assert f"httpx=={version.strip()} " in lock


def _read_event(out: IO[str], proc: subprocess.Popen[str]) -> dict[str, Any]:
    line = out.readline()
    if not line:
        proc.wait(timeout=10)
        pytest.fail(f"the SDK exited ({proc.returncode}) before the next event: "
                    f"{proc.stderr.read() if proc.stderr else ''}")
    event: dict[str, Any] = json.loads(line)
    return event


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sdk_alone_streams_a_live_run(
    sdk_python: Path,
    tmp_path: Path,
    redis_url: str,
    spawn_service: Callable[..., ServiceProcess],
) -> None:
    service = spawn_service(redis_url)
    with Bridge.from_url(redis_url, limits=LogLimits()) as bridge:
        run = bridge.open_run("alone-1", tenant="acme")
        run.set_phase("running")
        for i in range(1, 4):
            run.append({"kind": "step", "step_index": i}, seq=i)
        env = {
            "PATH": "/usr/bin:/bin",
            "MANTIS_ENDPOINT": service.base,
            "MANTIS_API_TOKEN": TOKENS["acme"],
        }
        proc = subprocess.Popen(
            [str(sdk_python), "-c", textwrap.dedent(STREAM), "alone-1"],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            assert proc.stdout is not None
            # queued, running, then the three rows already written: the replay.
            seen = [_read_event(proc.stdout, proc) for _ in range(5)]
            # Now live: the client is reading, so these arrive over the open stream.
            for i in range(4, 7):
                run.append({"kind": "step", "step_index": i}, seq=i)
            run.finish("complete")
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, err
    seen += [json.loads(line) for line in out.splitlines()]
    names = [event["event"] for event in seen]
    assert names[-1] == "terminal", names
    steps = [e["data"]["step_index"] for e in seen if e["data"].get("kind") == "step"]
    assert steps == [1, 2, 3, 4, 5, 6]
    ids = [event["id"] for event in seen]
    assert len(set(ids)) == len(ids) and ids == sorted(ids)
