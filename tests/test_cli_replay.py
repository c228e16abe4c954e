"""``python -m runner_bridge replay`` as a real child process (CONTRACT section 2)."""

from __future__ import annotations

import time
from pathlib import Path

import redis

from runlog.keys import live_channel
from runner_bridge.replay import Pacer

from .cli_support import (
    expected_events,
    log_events,
    log_length,
    run_cli,
    run_phase,
    start_cli,
    without_stamps,
)
from .conftest import fixture_path


def replay_args(path: Path, run_id: str, *extra: str) -> tuple[str, ...]:
    return ("replay", str(path), "--run-id", run_id, "--tenant", "acme", *extra)


def test_stops_at_the_first_bad_line_and_keeps_earlier_ones(
    store_url: str, tmp_path: Path
) -> None:
    result = run_cli(*replay_args(fixture_path("reasoning-bad.jsonl"), "bad", "--speed", "0"),
                     url=store_url, state_dir=tmp_path / "state")
    assert result.returncode == 1
    assert "line 3" in result.stderr and "not valid JSON" in result.stderr
    assert "published 2 lines" in result.stdout
    events = log_events(store_url, "bad")
    assert [(name, data.get("phase"), data.get("step_index")) for name, data in events] == [
        ("phase", "queued", None), ("phase", "running", None), ("step", None, 1),
    ]


def test_invalid_move_stops_before_any_later_line(store_url: str, tmp_path: Path) -> None:
    path = tmp_path / "moves.jsonl"
    path.write_bytes(
        b'{"kind": "phase", "phase": "running"}\n'
        b'{"kind": "step", "step_index": 1}\n'
        b'{"kind": "phase", "phase": "queued"}\n'
        b'{"kind": "step", "step_index": 2}\n'
    )
    result = run_cli(*replay_args(path, "moves", "--speed", "0"), url=store_url,
                     state_dir=tmp_path / "state")
    assert result.returncode == 1
    assert "line 3" in result.stderr and "running -> queued" in result.stderr
    assert [name for name, _ in log_events(store_url, "moves")] == ["phase", "phase", "step"]


def test_speed_zero_publishes_the_whole_file_once(store_url: str, tmp_path: Path) -> None:
    source = fixture_path("reasoning-small.jsonl")
    args = replay_args(source, "small", "--speed", "0")
    result = run_cli(*args, url=store_url, state_dir=tmp_path / "state")
    assert result.returncode == 0, result.stderr
    assert "published 56 lines" in result.stdout
    expected = expected_events(source, "small")
    assert without_stamps(log_events(store_url, "small"), expected) == without_stamps(
        expected, expected
    )
    assert run_phase(store_url, "small") == "complete"
    # The same replay again is a no-op: every line is known by its position in the file.
    again = run_cli(*args, url=store_url, state_dir=tmp_path / "state")
    assert again.returncode == 0, again.stderr
    assert "published 0 lines" in again.stdout and "56 already published" in again.stdout
    assert log_length(store_url, "small") == len(expected)


def test_pacing_follows_ts_divided_by_speed(redis_url: str, tmp_path: Path) -> None:
    path = tmp_path / "paced.jsonl"
    path.write_bytes(
        b'{"ts": "2026-06-08T00:00:00Z", "kind": "step", "step_index": 1}\n'
        b'{"ts": "2026-06-08T00:00:01Z", "kind": "step", "step_index": 2}\n'
        b'{"ts": "2026-06-08T00:00:02Z", "kind": "step", "step_index": 3}\n'
    )
    client = redis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    try:
        # Arrival times on the live channel show the pacing; the process's own start-up
        # time must not count.
        pubsub.subscribe(live_channel("paced"))
        assert pubsub.get_message(timeout=5)["type"] == "subscribe"
        replay = start_cli(*replay_args(path, "paced", "--speed", "10"), url=redis_url,
                           workdir=tmp_path)
        arrivals: list[float] = []
        deadline = time.monotonic() + 20
        while len(arrivals) < 4 and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=1)
            if message and message["type"] == "message":
                arrivals.append(time.monotonic())
        assert replay.wait(timeout=15) == 0, replay.stderr
    finally:
        pubsub.close()
        client.close()
    assert len(arrivals) == 4  # the run's queued phase, then the three rows
    assert arrivals[3] - arrivals[1] >= 0.18  # two 1 s gaps at speed 10, less timer slack


def test_missing_file_is_an_error_and_creates_no_run(store_url: str, tmp_path: Path) -> None:
    result = run_cli(*replay_args(tmp_path / "absent.jsonl", "ghost"), url=store_url,
                     state_dir=tmp_path / "state")
    assert result.returncode == 1
    assert "absent.jsonl" in result.stderr
    assert run_phase(store_url, "ghost") is None


def test_negative_speed_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_bytes(b"{}\n")
    result = run_cli(*replay_args(path, "r", "--speed", "-1"), url="redis://127.0.0.1:1/0",
                     state_dir=tmp_path / "state")
    assert result.returncode == 2
    assert "--speed" in result.stderr


def test_pacer_waits_the_ts_gaps_on_one_timeline() -> None:
    now = [100.0]
    pacer = Pacer(speed=2.0, clock=lambda: now[0])
    second = 1_000_000
    assert pacer.wait_for(10 * second) == 0.0  # the first line is due at once
    assert pacer.wait_for(None) == 0.0  # no ts: due with the previous line
    assert pacer.wait_for(14 * second) == 2.0  # 4 s of run time at speed 2
    now[0] += 3.0  # publishing fell 1 s behind: the next gap is shortened, not added to
    assert pacer.wait_for(16 * second) == 0.0
    assert pacer.wait_for(12 * second) == 0.0  # a ts going backwards waits nothing
    assert pacer.wait_for(14 * second) == 1.0  # 2 s after the previous line, at speed 2
    assert Pacer(speed=0).wait_for(10 * second) == Pacer(speed=0).wait_for(99 * second) == 0.0
