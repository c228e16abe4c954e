"""``python -m runner_bridge tail`` as a real child process (CONTRACT section 2)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import IO

import orjson
import redis
from redis.cluster import RedisCluster

from runlog.keys import log_key, meta_key
from runner_bridge import Bridge
from runner_bridge.tail import MAX_LINE_BYTES, LineReader

from .cli_support import (
    expected_events,
    log_events,
    log_length,
    run_cli,
    run_phase,
    start_cli,
    wait_until,
    without_stamps,
)
from .conftest import fixture_path
from .redis_server import running_cluster


def tail_args(path: Path, run_id: str, *extra: str) -> tuple[str, ...]:
    return ("tail", str(path), "--run-id", run_id, "--tenant", "acme", *extra)


def append(handle: IO[bytes], data: bytes) -> None:
    handle.write(data)
    handle.flush()


def hget_calls(url: str) -> int:
    """HGETs the server has run: the tail does one per idle poll, after reading the file."""
    client = redis.Redis.from_url(url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return int(stats.get("cmdstat_hget", {}).get("calls", 0))


def test_follows_a_growing_file_and_exits_on_terminal(redis_url: str, tmp_path: Path) -> None:
    path = tmp_path / "reasoning.jsonl"  # does not exist yet: tail waits for it
    tail = start_cli(*tail_args(path, "grow", "--poll-interval", "0.01"), url=redis_url,
                     workdir=tmp_path)
    try:
        wait_until(lambda: log_length(redis_url, "grow") == 1, "the run to be opened")
        with path.open("ab") as handle:
            append(handle, b'{"kind": "phase", "phase": "running", "ts": "2026-06-08T00:00:00Z"}\n')
            wait_until(lambda: log_length(redis_url, "grow") == 2, "the phase line")
            append(handle, b'{"ts": "2026-06-08T00:00:01Z", "kind": "step", "step_index": 1}\n')
            wait_until(lambda: log_length(redis_url, "grow") == 3, "the first row")
            # Half a line: the tail must hold it, not publish or reject it. Wait until the
            # tail has read the file after this write (two more idle polls) before finishing it.
            append(handle, b'{"ts": "2026-06-08T00:00:02Z", "kind": "step", ')
            polls = hget_calls(redis_url)
            wait_until(lambda: hget_calls(redis_url) >= polls + 2, "the tail to see the half line")
            assert log_length(redis_url, "grow") == 3
            append(handle, b'"step_index": 2}\n{"kind": "phase", "phase": "complete"}\n')
            assert tail.wait(timeout=15) == 0
    finally:
        tail.stop()
    events = log_events(redis_url, "grow")
    assert [name for name, _data in events] == ["phase", "phase", "step", "step", "phase",
                                               "terminal"]
    assert events[3][1] == {"ts": "2026-06-08T00:00:02Z", "kind": "step", "step_index": 2}
    assert tail.stderr == ""
    assert "skipped 0 bad lines" in tail.stdout


def test_sigkill_and_restart_publishes_every_line_exactly_once(
    redis_url: str, tmp_path: Path
) -> None:
    source = fixture_path("reasoning-long.jsonl")
    path = tmp_path / "reasoning.jsonl"
    path.write_bytes(source.read_bytes())
    total = len(expected_events(source, "long"))
    client = redis.Redis.from_url(redis_url)
    try:
        first = start_cli(*tail_args(path, "long"), url=redis_url, workdir=tmp_path, name="first")
        try:
            # Kill it mid-file, some batches in: whatever was in flight is the hard case.
            wait_until(lambda: int(client.hget(meta_key("long"), "n") or 0) >= 1500,
                       "the first tail to publish some lines")
            first.proc.send_signal(signal.SIGKILL)
            assert first.wait() == -signal.SIGKILL
        finally:
            first.stop()
        published_at_kill = int(client.hget(meta_key("long"), "n") or 0)
        assert published_at_kill < total, "the tail finished before it could be killed"
    finally:
        client.close()

    second = start_cli(*tail_args(path, "long"), url=redis_url, workdir=tmp_path, name="second")
    try:
        assert second.wait(timeout=30) == 0, second.stderr
    finally:
        second.stop()
    expected = expected_events(source, "long")
    assert without_stamps(log_events(redis_url, "long"), expected) == without_stamps(
        expected, expected
    )
    assert "skipped 0 bad lines" in second.stdout
    assert second.stderr == ""


def test_bad_lines_are_reported_and_skipped(store_url: str, tmp_path: Path) -> None:
    tail = start_cli(*tail_args(fixture_path("reasoning-bad.jsonl"), "bad"), url=store_url,
                     workdir=tmp_path)
    try:
        # Lines 1, 2 and 6 are good: the run opens, moves to running, takes two rows.
        wait_until(lambda: log_length(store_url, "bad") == 4, "the good lines")
        # The file has no terminal line: the run ends from elsewhere, and tail notices.
        done = run_cli("phase", "bad", "complete", url=store_url, state_dir=tmp_path / "state")
        assert done.returncode == 0, done.stderr
        assert tail.wait(timeout=15) == 0
    finally:
        tail.stop()
    events = log_events(store_url, "bad")
    assert [(name, data.get("step_index")) for name, data in events[:4]] == [
        ("phase", None), ("phase", None), ("step", 1), ("step", 3),
    ]
    reports = tail.stderr.splitlines()
    assert [line.split(":")[0] for line in reports] == ["line 3", "line 4", "line 5"]
    assert "not valid JSON" in reports[0]
    assert "JSON object" in reports[1]
    assert "exploded" in reports[2]
    assert "skipped 3 bad lines" in tail.stdout


def test_invalid_move_in_file_is_skipped_not_fatal(store_url: str, tmp_path: Path) -> None:
    path = tmp_path / "reasoning.jsonl"
    path.write_bytes(
        b'{"kind": "phase", "phase": "running"}\n'
        b'{"kind": "phase", "phase": "queued"}\n'
        b'{"kind": "step", "step_index": 1}\n'
        b'{"kind": "step", "ts": 5}\n'
        b'{"kind": "terminal"}\n'
        b'{"kind": "phase", "phase": "complete"}\n'
    )
    result = run_cli(*tail_args(path, "moves"), url=store_url, state_dir=tmp_path / "state")
    assert result.returncode == 0, result.stderr
    reports = result.stderr.splitlines()
    assert reports[0].startswith("line 2: ") and "running -> queued" in reports[0]
    assert reports[1].startswith("line 4: ") and "ts" in reports[1]
    assert reports[2].startswith("line 5: ") and "reserved" in reports[2]
    assert len(reports) == 3
    assert "skipped 3 bad lines" in result.stdout
    assert [name for name, _ in log_events(store_url, "moves")] == [
        "phase", "phase", "step", "phase", "terminal",
    ]


def test_tricky_file_is_published_intact(store_url: str, tmp_path: Path) -> None:
    source = fixture_path("reasoning-tricky.jsonl")
    result = run_cli(*tail_args(source, "tricky"), url=store_url, state_dir=tmp_path / "state")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    expected = expected_events(source, "tricky")
    events = log_events(store_url, "tricky")
    assert without_stamps(events, expected) == without_stamps(expected, expected)
    names = [name for name, _ in events]
    assert names.count("message") == 4  # no kind/type, a newline, non-ASCII, too long
    # The one row written without ts got one stamped; every other field kept as written.
    stamped = [data for _name, data in events if data.get("step_index") == 10]
    assert stamped[0]["ts"].endswith("Z")


def test_restart_resumes_with_true_line_numbers(store_url: str, tmp_path: Path) -> None:
    path = tmp_path / "reasoning.jsonl"
    path.write_bytes(b'{"kind": "phase", "phase": "running"}\n{"kind": "step", "step_index": 1}\n')
    first = start_cli(*tail_args(path, "resume"), url=store_url, workdir=tmp_path, name="first")
    try:
        wait_until(lambda: log_length(store_url, "resume") == 3, "the first two lines")
        first.proc.send_signal(signal.SIGTERM)
        assert first.wait() == 128 + signal.SIGTERM
    finally:
        first.stop()
    assert "stopped before run 'resume' ended" in first.stdout
    with path.open("ab") as handle:
        append(handle, b'{"kind": "step", "step_index": 2}\nnot json\n{"kind": "step", '
                       b'"step_index": 3}\n{"kind": "phase", "phase": "complete"}\n')
    result = run_cli(*tail_args(path, "resume"), url=store_url, state_dir=tmp_path / "state")
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[0].startswith("line 4: not valid JSON")
    steps = [data["step_index"] for name, data in log_events(store_url, "resume") if name == "step"]
    assert steps == [1, 2, 3]
    assert "published 3 lines, skipped 1 bad lines" in result.stdout


def test_exits_at_once_for_a_terminal_run(store_url: str, tmp_path: Path) -> None:
    with Bridge.from_url(store_url) as bridge:
        bridge.open_run("done", tenant="acme").finish("cancelled")
    missing = tmp_path / "never-written.jsonl"
    result = run_cli(*tail_args(missing, "done"), url=store_url, state_dir=tmp_path / "state")
    assert result.returncode == 0
    assert "run 'done' is cancelled" in result.stdout
    assert not missing.exists()
    assert run_phase(store_url, "done") == "cancelled"


def test_another_tenants_run_is_refused(store_url: str, tmp_path: Path) -> None:
    with Bridge.from_url(store_url) as bridge:
        bridge.open_run("theirs", tenant="other")
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"kind": "step"}\n')
    result = run_cli(*tail_args(path, "theirs"), url=store_url, state_dir=tmp_path / "state")
    assert result.returncode == 1
    assert "another tenant" in result.stderr
    assert log_length(store_url, "theirs") == 1


def test_a_truncated_file_stops_the_tail(redis_url: str, tmp_path: Path) -> None:
    path = tmp_path / "reasoning.jsonl"
    path.write_bytes(b'{"kind": "phase", "phase": "running"}\n{"kind": "step"}\n')
    tail = start_cli(*tail_args(path, "trunc", "--poll-interval", "0.01"), url=redis_url,
                     workdir=tmp_path)
    try:
        wait_until(lambda: log_length(redis_url, "trunc") == 3, "the two lines")
        os.truncate(path, 0)
        assert tail.wait(timeout=15) == 1
    finally:
        tail.stop()
    assert "truncated or replaced" in tail.stderr
    assert log_length(redis_url, "trunc") == 3


def test_scripts_lost_by_the_store_are_loaded_again(redis_url: str, tmp_path: Path) -> None:
    path = tmp_path / "reasoning.jsonl"
    path.write_bytes(b'{"kind": "phase", "phase": "running"}\n')
    tail = start_cli(*tail_args(path, "flush", "--poll-interval", "0.01"), url=redis_url,
                     workdir=tmp_path)
    try:
        wait_until(lambda: log_length(redis_url, "flush") == 2, "the phase line")
        client = redis.Redis.from_url(redis_url)
        try:
            client.script_flush()  # as after a store restart: the tail's next EVALSHA fails
        finally:
            client.close()
        with path.open("ab") as handle:
            append(handle, b'{"kind": "step", "step_index": 1}\n{"kind": "step", "step_index": 2}\n'
                           b'{"kind": "phase", "phase": "complete"}\n')
        assert tail.wait(timeout=15) == 0, tail.stderr
    finally:
        tail.stop()
    steps = [data["step_index"] for name, data in log_events(redis_url, "flush") if name == "step"]
    assert steps == [1, 2]
    assert log_length(redis_url, "flush") == 6


def test_tail_on_a_redis_cluster(tmp_path: Path) -> None:
    path = tmp_path / "reasoning.jsonl"
    path.write_bytes(
        b'{"kind": "phase", "phase": "running"}\n'
        b'{"kind": "phase", "phase": "queued"}\n'
        + b"".join(b'{"kind": "step", "step_index": %d}\n' % i for i in range(1, 1201))
        + b'{"kind": "phase", "phase": "complete"}\n'
    )
    with running_cluster() as url:
        result = run_cli(*tail_args(path, "clustered"), url=url, state_dir=tmp_path / "state")
        assert result.returncode == 0, result.stderr
        events = log_events_cluster(url, "clustered")
    assert result.stderr.startswith("line 2: ") and "running -> queued" in result.stderr
    steps = [data["step_index"] for name, data in events if name == "step"]
    assert steps == list(range(1, 1201))
    assert [name for name, _ in events[-2:]] == ["phase", "terminal"]


def log_events_cluster(url: str, run_id: str) -> list[tuple[str, dict]]:
    client = RedisCluster.from_url(url)
    try:
        entries = client.xrange(log_key(run_id))
    finally:
        client.close()
    return [(f[b"e"].decode(), orjson.loads(f[b"d"])) for _id, f in entries]


def test_line_reader_numbers_holds_partials_and_drops_oversized(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"a": 1}\n\n{"b": 2}\r\n{"c"')
    reader = LineReader.open_at(path, 0)
    try:
        lines, bad = reader.read_complete()
        assert [(ln.number, ln.text, ln.offset, ln.next_offset) for ln in lines] == [
            (1, b'{"a": 1}', 0, 9), (2, b"", 9, 10), (3, b'{"b": 2}', 10, 20),
        ]
        assert bad == [] and reader.read_complete() == ([], [])  # the half line waits
        with path.open("ab") as handle:
            # Line 5 outgrows the bound while still unterminated; line 6 is longer than
            # the bound but arrives whole.
            handle.write(b': 3}\n' + b"x" * (2 * MAX_LINE_BYTES + 10))
            handle.write(b'y\n{"d": 4}\n' + b"z" * (MAX_LINE_BYTES + 1) + b'\n{"e": 5}\n')
        lines, bad = [], []
        for _ in range(10):  # a few reads consume the file, bounded in any case
            more, worse = reader.read_complete()
            lines += more
            bad += worse
    finally:
        reader.close()
    assert [(ln.number, ln.text) for ln in lines] == [
        (4, b'{"c": 3}'), (6, b'{"d": 4}'), (8, b'{"e": 5}'),
    ]
    assert [b.line_no for b in bad] == [5, 7]
    assert lines[1].offset == len(b'{"c": 3}\n') + 20 + 2 * MAX_LINE_BYTES + 10 + 2
    # Opened at a recorded position, it keeps counting lines as the file does.
    resumed = LineReader.open_at(path, 20)
    try:
        assert resumed.read_complete()[0][0].number == 4
    finally:
        resumed.close()
