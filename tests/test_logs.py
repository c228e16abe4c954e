"""Structured logs: a whole session against a real ``python -m service`` leaves JSON access
lines with request ids, and no token, ticket or secret anywhere in its output."""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from runlog.logs import REDACTED, JsonFormatter, bind, scrub, setup_logging
from runner_bridge import Bridge
from service.requestlog import request_id_for

from .cli_support import run_cli
from .conftest import TOKENS

TICKET_SECRET = "ticket-secret-never-logged-7f3a"
WRONG_TOKEN = "wrong-token-never-logged-91bd"


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every log line of a process's output (its prints are plain text and skipped)."""
    lines = []
    for line in text.splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))  # a line that looks like JSON must be JSON
    return lines


def session(base: str, run_id: str) -> tuple[list[str], list[str]]:
    """Tokens, a ticket, a stream, a page and errors; returns (secrets seen, request ids)."""
    secrets = [*TOKENS.values(), WRONG_TOKEN, TICKET_SECRET]
    ids = []
    acme = {"X-Mantis-Token": TOKENS["acme"]}
    with httpx.Client(base_url=base, timeout=10) as http:
        got = http.get(f"/v1/runs/{run_id}", headers={**acme, "X-Request-Id": "client-id-1"})
        assert got.status_code == 200
        assert got.headers["X-Request-Id"] == "client-id-1"
        ids.append("client-id-1")
        # A header that is no sane id is replaced, not echoed.
        odd = http.get(f"/v1/runs/{run_id}", headers={**acme, "X-Request-Id": "a b\tc" * 40})
        assert re.fullmatch(r"[0-9a-f]{32}", odd.headers["X-Request-Id"])
        ids.append(odd.headers["X-Request-Id"])
        issued = http.post(f"/v1/runs/{run_id}/tickets", headers=acme)
        assert issued.status_code == 201
        ticket = issued.json()["ticket"]
        secrets.append(ticket)
        ids.append(issued.headers["X-Request-Id"])
        with http.stream(
            "GET", f"/v1/runs/{run_id}/events", params={"sse": "true", "ticket": ticket}
        ) as stream:
            assert stream.status_code == 200
            body = b"".join(stream.iter_bytes())
            ids.append(stream.headers["X-Request-Id"])
        assert b"event: terminal" in body
        page = http.get(f"/v1/runs/{run_id}/events", params={"since": ""}, headers=acme)
        assert page.status_code == 200
        for path, headers, status in (
            (f"/v1/runs/{run_id}", {"X-Mantis-Token": WRONG_TOKEN}, 401),
            (f"/v1/runs/{run_id}/events?since=nonsense", acme, 400),
            ("/v1/runs/absent/events", acme, 404),
            (f"/v1/runs/{run_id}/events?sse=true&ticket={ticket}x", {}, 401),
        ):
            answer = http.get(path, headers=headers)
            assert answer.status_code == status, (path, answer.text)
            assert "X-Request-Id" in answer.headers
        hook = http.post(
            "/v1/webhooks", headers=acme, json={"url": "http://127.0.0.1:9/h",
                                                "events": ["run.finished"]}
        )
        if hook.status_code == 201:  # webhooks are served (their secret must not be logged)
            secrets.append(hook.json()["secret"])
        metrics = http.get("/metrics")
        assert metrics.status_code == 200
    return secrets, ids


def test_a_session_logs_json_access_lines_and_no_secret(
    spawn_service, redis_url: str
) -> None:
    with Bridge.from_url(redis_url) as bridge:
        run = bridge.open_run("r-logs", tenant="acme")
        run.set_phase("running")
        run.append({"kind": "step", "type": "click"})
        run.finish("complete")
    svc = spawn_service(
        redis_url,
        MANTIS_TICKET_SECRET=TICKET_SECRET,
        MANTIS_LOG_LEVEL="DEBUG",  # the most a deployment would ever log
        MANTIS_WEBHOOK_ALLOW_PRIVATE="1",
        MANTIS_WEBHOOK_ALLOW_HTTP="1",
    )
    secrets, ids = session(svc.base, "r-logs")
    svc.proc.terminate()
    svc.proc.wait(timeout=20)
    output = svc.log.read_text()
    for secret in secrets:
        assert secret not in output, "a secret reached the service's output"
    lines = json_lines(output)
    access = [line for line in lines if line["logger"] == "mantis.access"]
    assert access, output[-2000:]
    for line in access:
        assert {"ts", "level", "msg", "request_id", "method", "path", "status",
                "duration_ms", "tenant"} <= line.keys(), line
        assert "?" not in line["path"]  # never the query string (it may carry a ticket)
    by_id = {line["request_id"]: line for line in access}
    for request_id in ids:
        assert request_id in by_id, f"no access line for request {request_id}"
    assert by_id["client-id-1"]["tenant"] == "acme"
    assert by_id["client-id-1"]["status"] == 200
    stream_line = by_id[ids[3]]
    assert stream_line["path"] == "/v1/runs/r-logs/events"
    assert stream_line["tenant"] == "acme"  # authenticated by the ticket
    assert stream_line["stream"] is True
    statuses = {line["status"] for line in access}
    assert {200, 201, 400, 401, 404} <= statuses


def test_the_runner_cli_logs_json_when_asked(redis_url: str, tmp_path: Path) -> None:
    with Bridge.from_url(redis_url) as bridge:
        bridge.open_run("r-cli-log", tenant="acme")
    result = run_cli(
        "phase", "r-cli-log", "running", url=redis_url, state_dir=tmp_path / "state",
        MANTIS_LOG_LEVEL="INFO",
    )
    assert result.returncode == 0, result.stderr
    lines = json_lines(result.stderr)
    done = [line for line in lines if line.get("command") == "phase"]
    assert done and done[-1]["exit_code"] == 0 and done[-1]["run_id"] == "r-cli-log"
    # By default the CLI logs warnings only: its stderr stays for a person.
    quiet = run_cli("phase", "r-cli-log", "complete", url=redis_url, state_dir=tmp_path / "s2")
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_a_bad_log_level_is_named() -> None:
    with pytest.raises(ValueError, match="MANTIS_LOG_LEVEL"):
        setup_logging(level="chatty", stream=io.StringIO())


def format_one(message: str, *args: Any, **extra: Any) -> dict[str, Any]:
    record = logging.LogRecord("t", logging.INFO, __file__, 1, message, args, None)
    for key, value in extra.items():
        setattr(record, key, value)
    line: dict[str, Any] = json.loads(JsonFormatter().format(record))
    return line


def test_the_formatter_masks_what_looks_like_a_secret() -> None:
    ticket = "v1.WyJhY21lIiwxNzAwMDAwMDAwMDAwLDE3MDAwMDAzMDAwMDBd.q8C2aP1tE9xv3GzV0oBf7mQk"
    line = format_one(
        "got %s and whsec_QUJDREVGR0hJSktMTU5PUA== from redis://user:hunter2@db:6379/0",
        ticket,
        token="token-acme-secret",
        webhook_signature="v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=",
        status=200,
    )
    assert ticket not in line["msg"]
    assert "whsec_" not in line["msg"] and "hunter2" not in line["msg"]
    assert line["token"] == REDACTED and line["webhook_signature"] == REDACTED
    assert line["status"] == 200
    assert scrub("nothing secret here") == "nothing secret here"


def test_bound_fields_reach_every_line_of_the_task() -> None:
    with bind(request_id="abc"):
        inside = format_one("hello")
    outside = format_one("hello")
    assert inside["request_id"] == "abc"
    assert "request_id" not in outside


@pytest.mark.parametrize(
    ("given", "kept"),
    [("abc-123", True), ("a" * 128, True), ("a" * 129, False), ("a b", False),
     ("", False), (None, False), ("é", False), ("x\r\ny", False)],
)
def test_request_ids_from_clients_are_kept_only_when_sane(given: str | None, kept: bool) -> None:
    assert (request_id_for(given) == given) is kept
