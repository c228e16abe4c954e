"""``python -m runner_bridge phase`` and the CLI's configuration errors (CONTRACT section 2, 4)."""

from __future__ import annotations

from pathlib import Path

from runner_bridge import Bridge

from .cli_support import log_events, log_length, run_cli, run_phase
from .redis_server import running_redis


def open_run(url: str, run_id: str, *phases: str) -> None:
    with Bridge.from_url(url) as bridge:
        run = bridge.open_run(run_id, tenant="acme")
        for phase in phases:
            run.set_phase(phase)


def test_moves_a_run_through_its_phases(store_url: str, tmp_path: Path) -> None:
    open_run(store_url, "r1")
    state = tmp_path / "state"
    running = run_cli("phase", "r1", "running", url=store_url, state_dir=state)
    assert running.returncode == 0, running.stderr
    assert "now running" in running.stdout
    assert run_phase(store_url, "r1") == "running"
    halted = run_cli("phase", "r1", "halted", "--halt-class", "captcha", url=store_url,
                     state_dir=state)
    assert halted.returncode == 0, halted.stderr
    events = log_events(store_url, "r1")
    assert [name for name, _ in events] == ["phase", "phase", "phase", "terminal"]
    assert events[-2][1]["halt_class"] == "captcha"
    assert events[-1][1] == {"phase": "halted", "run_id": "r1", "halt_class": "captcha"}


def test_redis_option_wins_over_the_environment(redis_url: str, tmp_path: Path) -> None:
    open_run(redis_url, "r1")
    result = run_cli("phase", "r1", "cancelled", "--redis", redis_url,
                     url="redis://127.0.0.1:1/0", state_dir=tmp_path / "state")
    assert result.returncode == 0, result.stderr
    assert run_phase(redis_url, "r1") == "cancelled"


def test_invalid_move_names_both_phases_and_writes_nothing(store_url: str, tmp_path: Path) -> None:
    open_run(store_url, "r1")
    result = run_cli("phase", "r1", "complete", url=store_url, state_dir=tmp_path / "state")
    assert result.returncode == 1
    assert "queued -> complete" in result.stderr
    assert log_length(store_url, "r1") == 1
    assert run_phase(store_url, "r1") == "queued"


def test_a_terminal_run_takes_no_more_moves(store_url: str, tmp_path: Path) -> None:
    open_run(store_url, "r1", "running", "complete")
    result = run_cli("phase", "r1", "running", url=store_url, state_dir=tmp_path / "state")
    assert result.returncode == 1
    assert "complete" in result.stderr and "'running'" in result.stderr
    assert log_length(store_url, "r1") == 4


def test_unknown_run_is_an_error(store_url: str, tmp_path: Path) -> None:
    result = run_cli("phase", "ghost", "running", url=store_url, state_dir=tmp_path / "state")
    assert result.returncode == 1
    assert "no run 'ghost'" in result.stderr
    assert run_phase(store_url, "ghost") is None


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    state = tmp_path / "state"
    url = "redis://127.0.0.1:1/0"  # never reached: the arguments are refused first
    cases = [
        (("phase", "r1", "exploded"), "invalid choice"),
        (("phase", "r1", "running", "--halt-class", "captcha"), "halt_class"),
        (("phase", "bad id!", "running"), "RUN_ID"),
        (("tail", "f.jsonl", "--run-id", "r1"), "--tenant"),
        (("tail", "f.jsonl", "--run-id", "r1", "--tenant", "acme", "--poll-interval", "0"),
         "--poll-interval"),
        ((), "COMMAND"),
    ]
    for args, expected in cases:
        result = run_cli(*args, url=url, state_dir=state)
        assert (result.returncode, expected in result.stderr) == (2, True), (args, result.stderr)


def test_bad_limits_from_the_environment_exit_2(tmp_path: Path) -> None:
    result = run_cli("phase", "r1", "running", url="redis://127.0.0.1:1/0",
                     state_dir=tmp_path / "state", MANTIS_STREAM_MAXLEN="lots")
    assert result.returncode == 2
    assert "MANTIS_STREAM_MAXLEN" in result.stderr


def test_no_store_configured_exits_2(tmp_path: Path) -> None:
    result = run_cli("phase", "r1", "running", url=None, state_dir=tmp_path / "state")
    assert result.returncode == 2
    assert "MANTIS_REDIS_URL" in result.stderr


def test_finds_the_embedded_store_through_its_discovery_file(
    embedded_url: str, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "embedded-store.url").write_text(embedded_url + "\n")
    open_run(embedded_url, "found")
    result = run_cli("phase", "found", "running", url=None, state_dir=state)
    assert result.returncode == 0, result.stderr
    assert run_phase(embedded_url, "found") == "running"


def test_unreachable_store_exits_1_without_the_password(tmp_path: Path) -> None:
    result = run_cli("phase", "r1", "running", url="redis://:hunter2secret@127.0.0.1:1/0",
                     state_dir=tmp_path / "state")
    assert result.returncode == 1
    assert "cannot reach the store" in result.stderr
    assert "hunter2secret" not in result.stderr + result.stdout


def test_wrong_password_exits_1_without_either_password(tmp_path: Path) -> None:
    with running_redis(None, "--requirepass", "right-pass-123") as (url, _proc):
        wrong = url.replace("redis://", "redis://:wrong-pass-456@")
        result = run_cli("phase", "r1", "running", "--redis", wrong, url=None,
                         state_dir=tmp_path / "state")
    assert result.returncode == 1
    assert "the store at redis://***@127.0.0.1" in result.stderr
    assert "refused the credentials" in result.stderr
    output = result.stderr + result.stdout
    assert "wrong-pass-456" not in output and "right-pass-123" not in output
