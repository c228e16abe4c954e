"""Running the pinned Durable Streams conformance suite (conformance/) against a base URL."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONFORMANCE = ROOT / "conformance"
SUITE_TIMEOUT_S = 600


@dataclass(frozen=True)
class SuiteCounts:
    """The suite's test counts for one server (skipped: the suite's own ``skip``s)."""

    total: int
    passed: int
    failed: int
    skipped: int
    failures: tuple[str, ...]


def ensure_node_tools() -> None:
    """``npm ci`` the pinned suite (via .ci/ensure-node-tools); skip without Node.js."""
    if shutil.which("node") is None and os.geteuid() != 0:
        pytest.skip("Node.js and npm are needed: sudo apt-get install -y nodejs npm")
    done = subprocess.run(
        ["bash", str(ROOT / ".ci" / "ensure-node-tools")],
        capture_output=True,
        text=True,
        timeout=SUITE_TIMEOUT_S,
    )
    if done.returncode != 0:
        pytest.fail(f".ci/ensure-node-tools failed:\n{done.stdout}\n{done.stderr}")


def run_suite(base_url: str, report: Path) -> SuiteCounts:
    """Run every test of the suite against ``base_url``; the counts from its JSON report."""
    env = {**os.environ, "CONFORMANCE_TEST_URL": base_url, "CI": "true", "NO_COLOR": "1"}
    done = subprocess.run(
        [
            str(CONFORMANCE / "node_modules" / ".bin" / "vitest"),
            "run",
            "--reporter=json",
            f"--outputFile={report}",
        ],
        cwd=CONFORMANCE,
        env=env,
        capture_output=True,
        text=True,
        timeout=SUITE_TIMEOUT_S,
    )
    if not report.exists():
        pytest.fail(f"the suite wrote no report:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    data = json.loads(report.read_text())
    failures = tuple(
        " > ".join([*test["ancestorTitles"], test["title"]])
        for suite in data["testResults"]
        for test in suite["assertionResults"]
        if test["status"] == "failed"
    )
    return SuiteCounts(
        total=data["numTotalTests"],
        passed=data["numPassedTests"],
        failed=data["numFailedTests"],
        skipped=data["numPendingTests"] + data["numTodoTests"],
        failures=failures,
    )
