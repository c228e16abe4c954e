"""``python -m runner_bridge work`` as real processes against a real redis-server: sharing
the queue, dying (SIGKILL), stalling (SIGSTOP) past the claim timeout, cancel requests and
SIGTERM shutdown (CONTRACT section 7)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from .queue_support import (
    ROOT,
    Workers,
    cancel,
    expected_rows,
    is_phase,
    phases,
    plan,
    queue_state,
    read_log,
    read_meta,
    row_keys,
    rows,
    submit,
    submit_plan,
    wait_for,
)
from .redis_server import free_port, running_redis


@pytest.fixture
def workers(redis_url: str, tmp_path: Path) -> Iterator[Workers]:
    pool = Workers(url=redis_url, tmp=tmp_path)
    yield pool
    pool.stop_all()


CLAIMED = re.compile(r"(\S+) (claimed|took over) run '([^']+)'")


def claims(*outputs: str) -> Counter[str]:
    """How many times each run was claimed or taken over, across worker logs."""
    return Counter(m.group(3) for out in outputs for m in CLAIMED.finditer(out))


def test_thirty_runs_over_three_workers_each_taken_once(
    workers: Workers, redis_url: str
) -> None:
    procs = [workers.start(f"w{i}", "--demo", "--pace-s", "0.01") for i in (1, 2)]
    procs.append(workers.start("w3", "--demo", "--pace-s", "0.01", "--concurrency", "2"))
    steps = plan(4)
    run_ids = [f"run-{i:02d}" for i in range(30)]
    for run_id in run_ids:
        submit_plan(redis_url, run_id, steps)
    for run_id in run_ids:
        wait_for(lambda r=run_id: is_phase(redis_url, r, "complete"), f"{run_id} to complete")
    for run_id in run_ids:
        assert phases(redis_url, run_id) == ["queued", "running", "complete"], run_id
        assert row_keys(redis_url, run_id) == expected_rows(steps), run_id
        meta = read_meta(redis_url, run_id)
        assert meta["fence"] == "1", run_id  # one claim, never taken over
        assert meta["worker"] in {"w1", "w2", "w3.1", "w3.2"}
    assert claims(*(p.output() for p in procs)) == Counter(run_ids)
    assert queue_state(redis_url) == (0, 0)
    for p in procs:
        p.signal(signal.SIGTERM)
    assert [p.wait() for p in procs] == [0, 0, 0]


def test_a_killed_workers_run_is_finished_by_another_exactly_once(
    workers: Workers, redis_url: str
) -> None:
    steps = plan(12)
    submit_plan(redis_url, "r1", steps)
    first = workers.start("w1", "--demo", "--pace-s", "0.15")
    wait_for(lambda: len(rows(redis_url, "r1")) >= 4, "w1 to be mid-run")
    second = workers.start("w2", "--demo", "--pace-s", "0.01")
    first.proc.kill()  # SIGKILL: no goodbye, the claim just stops being renewed
    first.wait()
    wait_for(lambda: is_phase(redis_url, "r1", "complete"), "w2 to finish the run")
    assert phases(redis_url, "r1") == ["queued", "running", "recovering", "running", "complete"]
    assert row_keys(redis_url, "r1") == expected_rows(steps)  # every row once, in order
    assert [name for name, _ in read_log(redis_url, "r1")].count("terminal") == 1
    meta = read_meta(redis_url, "r1")
    assert (meta["worker"], meta["fence"]) == ("w2", "2")
    assert "w2 took over run 'r1'" in second.output()
    assert queue_state(redis_url) == (0, 0)


def test_a_stalled_workers_late_writes_are_refused(workers: Workers, redis_url: str) -> None:
    steps = plan(10)
    submit_plan(redis_url, "r1", steps)
    stalled = workers.start("w1", "--demo", "--pace-s", "0.2")
    wait_for(lambda: len(rows(redis_url, "r1")) >= 2, "w1 to be mid-run")
    stalled.signal(signal.SIGSTOP)  # alive but silent, past the claim timeout
    rescuer = workers.start("w2", "--demo", "--pace-s", "0.2")
    wait_for(lambda: read_meta(redis_url, "r1").get("worker") == "w2", "w2 to take over")
    stalled.signal(signal.SIGCONT)  # wakes up believing it still holds the run
    wait_for(lambda: "dropped run 'r1'" in stalled.output(), "w1 to learn it")
    # Its next write carried the old fence and was refused: nothing of it reached the log.
    assert "write refused: run 'r1': the run was taken over by another worker" in stalled.output()
    wait_for(lambda: is_phase(redis_url, "r1", "complete"), "w2 to finish the run")
    assert row_keys(redis_url, "r1") == expected_rows(steps)
    assert phases(redis_url, "r1") == ["queued", "running", "recovering", "running", "complete"]
    assert "w2 took over run 'r1'" in rescuer.output()
    stalled.signal(signal.SIGTERM)
    assert stalled.wait() == 0
    assert "lost 1 to takeover" in stalled.output()


def test_cancel_request_reaches_the_running_job(workers: Workers, redis_url: str) -> None:
    steps = plan(40)
    submit_plan(redis_url, "r1", steps)
    workers.start("w1", "--demo", "--pace-s", "0.1")
    wait_for(lambda: len(rows(redis_url, "r1")) >= 2, "the run to be going")
    assert cancel(redis_url, "r1") == "requested"
    wait_for(lambda: is_phase(redis_url, "r1", "cancelled"), "the worker to finish it cancelled")
    assert phases(redis_url, "r1") == ["queued", "running", "cancelled"]
    written = row_keys(redis_url, "r1")
    assert written == expected_rows(steps)[: len(written)]
    assert len(written) < len(expected_rows(steps))
    assert queue_state(redis_url) == (0, 0)


def test_sigterm_lets_the_job_in_hand_finish_and_takes_no_more(
    workers: Workers, redis_url: str
) -> None:
    steps = plan(8)
    submit_plan(redis_url, "r1", steps)
    worker = workers.start("w1", "--demo", "--pace-s", "0.15", "--grace-s", "30")
    wait_for(lambda: len(rows(redis_url, "r1")) >= 2, "the run to be going")
    worker.signal(signal.SIGTERM)
    submit_plan(redis_url, "r2", steps)  # arrives while the worker drains
    assert worker.wait() == 0
    assert phases(redis_url, "r1") == ["queued", "running", "complete"]
    assert row_keys(redis_url, "r1") == expected_rows(steps)
    assert phases(redis_url, "r2") == ["queued"]  # left for another worker
    assert "took 1 runs, finished 1" in worker.output()
    other = workers.start("w2", "--demo", "--pace-s", "0")
    wait_for(lambda: is_phase(redis_url, "r2", "complete"), "r2 to be taken by w2")
    assert "w2 claimed run 'r2'" in other.output()


def test_sigterm_past_the_grace_hands_the_run_back(workers: Workers, redis_url: str) -> None:
    steps = plan(30)
    submit_plan(redis_url, "r1", steps)
    worker = workers.start("w1", "--demo", "--pace-s", "0.2", "--grace-s", "0.3")
    wait_for(lambda: len(rows(redis_url, "r1")) >= 2, "the run to be going")
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0
    assert "handed back 1" in worker.output()
    assert is_phase(redis_url, "r1", "recovering")
    assert "worker" not in read_meta(redis_url, "r1")
    # Handed back means queued again: the next worker takes it at once, without waiting
    # for a claim timeout (set long here to show it).
    workers.start("w2", "--demo", "--pace-s", "0", claim_timeout_s=60)
    wait_for(lambda: is_phase(redis_url, "r1", "complete"), "w2 to finish the run")
    assert phases(redis_url, "r1") == ["queued", "running", "recovering", "running", "complete"]
    assert row_keys(redis_url, "r1") == expected_rows(steps)
    assert queue_state(redis_url) == (0, 0)


def test_demo_halts_a_run_with_a_bad_plan(workers: Workers, redis_url: str) -> None:
    submit(redis_url, "bad", {"task_suite": {"_micro_plan": [{"type": "click"}]}})
    submit(redis_url, "default", {"task_suite": {"goal": "no plan: the demo's own"}})
    workers.start("w1", "--demo", "--pace-s", "0")
    wait_for(lambda: is_phase(redis_url, "bad", "halted"), "the bad plan to halt")
    assert read_meta(redis_url, "bad")["halt_class"] == "invalid_plan"
    log_rows = [d for name, d in read_log(redis_url, "bad") if name == "log"]
    assert "_micro_plan[0].target must be a non-empty string" in log_rows[0]["message"]
    wait_for(lambda: is_phase(redis_url, "default", "complete"), "the default plan to run")
    kinds = [row["kind"] for row in rows(redis_url, "default")]
    assert kinds.count("extract") == 2


def test_pluggable_handler(workers: Workers, redis_url: str) -> None:
    submit(redis_url, "r1", {"task_suite": {"goal": "echo"}})
    workers.start("w1", "--handler", "tests.queue_handler_sample:handle")
    wait_for(lambda: is_phase(redis_url, "r1", "complete"), "the handler to finish")
    assert [r["kind"] for r in rows(redis_url, "r1")] == ["step"]
    assert rows(redis_url, "r1")[0]["goal"] == "echo"


def test_work_needs_a_handler_and_says_so(redis_url: str) -> None:
    env_url = ["--redis", redis_url]
    for args, message in (
        ([], "work needs --demo or --handler MODULE:FUNCTION"),
        (["--handler", "nomodule"], "must be MODULE:FUNCTION"),
        (["--handler", "json:dumps"], "must be an async function"),
        (["--demo", "--worker", "bad name"], "worker name"),
        (["--demo", "--concurrency", "0"], "must be 1 or more"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "runner_bridge", "work", *env_url, *args],
            cwd=ROOT, capture_output=True, text=True, timeout=30, check=False,
        )
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr, (args, done.stderr)


def test_worker_exits_with_a_clear_error_when_the_store_goes(tmp_path: Path) -> None:
    with running_redis() as (url, server):
        pool = Workers(url=url, tmp=tmp_path)
        try:
            worker = pool.start("w1", "--demo")
            server.kill()
            server.wait()
            assert worker.wait() == 1
        finally:
            pool.stop_all()
    output = worker.output()
    assert "runner_bridge work: error: cannot reach the store at" in output
    assert "Traceback" not in output


def test_a_worker_serves_its_metrics(workers: Workers, redis_url: str) -> None:
    port = free_port()
    steps = plan(2)
    submit_plan(redis_url, "m1", steps)
    proc = workers.start("w1", "--demo", "--pace-s", "0.01", MANTIS_METRICS_PORT=str(port))
    wait_for(lambda: is_phase(redis_url, "m1", "complete"), "m1 to complete")

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            return resp.read().decode()

    # The outcome is counted just after the run's last write: wait for it to show.
    wait_for(lambda: 'mantis_worker_runs_total{outcome="finished"} 1.0' in scrape(), "metrics")
    text = scrape()
    assert "mantis_worker_claims_total 1.0" in text
    assert "mantis_worker_takeovers_total 0.0" in text
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0


def test_a_bad_metrics_port_is_named(redis_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MANTIS_")}
    env.update(MANTIS_REDIS_URL=redis_url, MANTIS_METRICS_PORT="ninety")
    done = subprocess.run(
        [sys.executable, "-m", "runner_bridge", "work", "--demo"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=30, check=False,
    )
    assert done.returncode == 2
    assert "MANTIS_METRICS_PORT must be a port number, got 'ninety'" in done.stderr
