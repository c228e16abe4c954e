"""The official Durable Streams server conformance suite, against ``python -m service`` on a
real redis-server and against the protocol's Node reference server, side by side.

Slow (two full runs of the suite, a few minutes): ``pytest -m slow``. Needs Node.js; the
pinned suite is installed by ``.ci/ensure-node-tools`` (``npm ci`` in conformance/).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .durable_conformance import CONFORMANCE, SuiteCounts, ensure_node_tools, run_suite
from .redis_server import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


@pytest.fixture
def reference_server(tmp_path: Path) -> Iterator[str]:
    """The reference server (in memory) on a free loopback port."""
    port = free_port()
    log = (tmp_path / "reference.log").open("wb")
    proc = subprocess.Popen(
        ["node", "reference-server.mjs", str(port)],
        cwd=CONFORMANCE,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    try:
        _wait_port(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    import socket
    import time

    end = time.monotonic() + 30
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError("the reference server exited")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)  # a child process's port: nothing to await
    raise RuntimeError("the reference server did not listen in time")


def _row(name: str, counts: SuiteCounts) -> str:
    return f"{name:<30}{counts.passed:>8}{counts.failed:>8}{counts.skipped:>9}{counts.total:>8}"


def test_conformance_suite_ours_and_reference(
    redis_url: str,
    spawn_service: Callable[..., Any],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    ensure_node_tools()
    ours = spawn_service(redis_url, MANTIS_STREAMS_ANONYMOUS_TENANT="conformance")
    ours_counts = run_suite(ours.base, tmp_path / "ours.json")
    reference = request.getfixturevalue("reference_server")
    ref_counts = run_suite(reference, tmp_path / "reference.json")
    print()
    print(f"{'server':<30}{'passed':>8}{'failed':>8}{'skipped':>9}{'total':>8}")
    print(_row("mantis (python -m service)", ours_counts))
    print(_row("reference (Node)", ref_counts))
    for failure in ours_counts.failures:
        print(f"  ours failed: {failure}")
    for failure in ref_counts.failures:
        print(f"  reference failed: {failure}")
    assert ours_counts.total == ref_counts.total > 300
    assert ours_counts.failures == (), ours_counts.failures
    assert ours_counts.passed >= ref_counts.passed
