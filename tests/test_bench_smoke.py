"""``python -m bench --smoke``: every scenario at tiny sizes, so ``make bench`` never rots.

Correctness only: zero gaps and duplicates, every client finished, every scenario produced
its figures and the table has a row per target. No timing is asserted: the smoke sizes
measure nothing worth comparing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = {
    "fanout", "fanout_asyncio", "idle", "hot_run", "hot_run_10k", "replay_storm",
    "redis_per_pod", "bridge", "tail", "runs", "webhooks",
}
# The keys each scenario's figures must carry (the table is built from them).
FIGURES = {
    "fanout": ["cpu_us_per_event", "p99_ms", "max_per_s_p99_50", "service_writes_per_event"],
    "fanout_asyncio": ["cpu_us_per_event", "p99_ms"],
    "idle": ["rss_kib_per_conn", "idle_service_cpu_pct"],
    "hot_run": ["p99_ms", "delivered_per_s"],
    "hot_run_10k": ["p99_ms", "delivered_per_s"],
    "replay_storm": ["events_per_s", "service_us_per_event"],
    "redis_per_pod": ["service_cmds_per_event_w1", "service_cmds_per_event_w10",
                      "service_conns_w1", "service_conns_w10", "append_cmds_per_event"],
    "bridge": ["pipelined_appends_per_s", "sequential_appends_per_s"],
    "tail": ["measured"],
    "runs": ["submits_per_s", "polls_per_s", "submit_p99_ms", "poll_p99_ms"],
    "webhooks": ["deliveries_per_s", "p99_ms", "duplicates"],
}


@pytest.mark.timeout(150)
def test_bench_smoke(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=140, check=False,
    )
    output = proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.returncode == 0, output
    [result] = tmp_path.glob("*.json")
    data = json.loads(result.read_text())
    scenarios = data["scenarios"]
    assert set(scenarios) == SCENARIOS, output
    for name, scenario in scenarios.items():
        assert not scenario["errors"], (name, scenario["errors"])
        assert not scenario["problems"], (name, scenario["problems"])
        assert scenario["reps"], f"{name} produced no figures"
        for rep in scenario["reps"]:
            assert rep.get("gaps", 0) == 0, (name, rep)
            assert rep.get("dups", 0) == 0, (name, rep)
            for key in FIGURES[name]:
                assert rep.get(key) is not None, (name, key, rep)
    # The service's commands per appended event do not depend on the watcher count (a
    # stray command or two in the window is tolerated: 0.02 per event at these sizes).
    pod = scenarios["redis_per_pod"]["median"]
    assert abs(pod["service_cmds_per_event_w1"] - pod["service_cmds_per_event_w10"]) <= 0.05
    metrics = [row["metric"] for row in data["table"]]
    for words in ("CPU per delivered event", "Max deliveries/s", "RSS per idle", "Hot run",
                  "Replay storm", "Redis commands", "Redis connections", "AsyncBridge",
                  "tail lines/s", "Runs API submits/s", "Runs API cheap polls/s",
                  "Gaps / duplicates", "default asyncio loop"):
        assert any(words in m for m in metrics), (words, metrics)
    assert "metric" in proc.stdout and str(result) in proc.stdout
