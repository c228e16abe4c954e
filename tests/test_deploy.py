"""The files in deploy/ are what gets deployed, so they are checked like code: the Redis
ACL users on a real redis-server, the systemd unit's hardening and stop timeout, the
haproxy config's checks and timeouts (tests/test_loadbalancer.py runs the same file)."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.exceptions import NoPermissionError, ResponseError

from runlog.calls import LogLimits
from runlog.keys import QUEUE_GROUP, queue_key
from runner_bridge import Bridge
from service.__main__ import SHUTDOWN_GRACE_S
from service.settings import Settings

from .conftest import ROOT, TOKEN_SPEC, TOKENS
from .contract_support import SSE, read_stream
from .redis_server import running_redis

DEPLOY = ROOT / "deploy"
PASSWORDS = {"runner": "runner-test-password", "service": "service-test-password"}


def acl_with_test_passwords(tmp_path: Path) -> Path:
    """deploy/users.acl with each user's placeholder digest replaced by a test password's."""
    text = (DEPLOY / "users.acl").read_text()
    for user, password in PASSWORDS.items():
        digest = hashlib.sha256(password.encode()).hexdigest()
        text, count = re.subn(
            rf"^(user {user} on )#0{{64}}", rf"\g<1>#{digest}", text, flags=re.MULTILINE
        )
        assert count == 1, f"deploy/users.acl has no placeholder line for {user}"
    path = tmp_path / "users.acl"
    path.write_text(text)
    return path


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A real redis-server started with the shipped ACL file; URLs by user."""
    with running_redis(None, "--aclfile", str(acl_with_test_passwords(tmp_path))) as (url, _p):
        host_port = url.removeprefix("redis://")
        yield {user: f"redis://{user}:{pw}@{host_port}" for user, pw in PASSWORDS.items()}


def test_the_runner_user_appends_through_the_bridge_and_can_do_nothing_else(
    acl_redis: dict[str, str],
) -> None:
    with Bridge.from_url(acl_redis["runner"], limits=LogLimits()) as bridge:
        run = bridge.open_run("acl1", tenant="acme")
        run.set_phase("running")
        run.append({"kind": "step", "step_index": 0}, seq=1)
        run.append({"kind": "step", "step_index": 0}, seq=1)  # exactly once (dedup)
        run.finish("complete")
    runner = redis.Redis.from_url(acl_redis["runner"])
    try:
        # The work queue: create the group, read, acknowledge.
        runner.xgroup_create(queue_key(), QUEUE_GROUP, id="0", mkstream=True)
        assert runner.xreadgroup(QUEUE_GROUP, "w1", {queue_key(): ">"}, count=1) == []
        refused = [
            lambda: runner.flushall(),
            lambda: runner.config_get("*"),
            lambda: runner.keys("*"),
            lambda: runner.scan(0),
            lambda: runner.execute_command("CLIENT", "LIST"),
            lambda: runner.execute_command("SAVE"),
            lambda: runner.execute_command("ACL", "LIST"),
            lambda: runner.xrange("mantis:{acl1}:log"),  # reading logs is the service's job
            lambda: runner.set("elsewhere", "x"),  # outside mantis:*
            lambda: runner.eval("return 1", 0),  # only the scripts it loads, by digest
        ]
        for attempt in refused:
            with pytest.raises(NoPermissionError):
                attempt()
    finally:
        runner.close()
    default = redis.Redis.from_url(acl_redis["runner"].replace("runner:", "default:"))
    try:
        with pytest.raises((ResponseError, redis.AuthenticationError)):
            default.ping()
    finally:
        default.close()


async def test_the_service_user_streams_a_run_the_runner_wrote(
    acl_redis: dict[str, str], aiohttp_client
) -> None:
    from service.app import create_app
    from service.auth import TokenTable

    with Bridge.from_url(acl_redis["runner"], limits=LogLimits()) as bridge:
        run = bridge.open_run("acl2", tenant="acme")
        run.set_phase("running")
        url = acl_redis["service"]
        settings = Settings(tenant_tokens=TOKEN_SPEC, redis_url=url)
        client = await aiohttp_client(
            create_app(settings, TokenTable.parse(TOKEN_SPEC), url),
            server_kwargs={"host": "127.0.0.1"},
        )
        headers = {"X-Mantis-Token": TOKENS["acme"]}
        assert (await client.get("/readyz")).status == 200
        resp = await client.get(SSE.format(run_id="acl2"), headers=headers)
        assert resp.status == 200
        run.append({"kind": "step", "step_index": 0})  # live, over the service's pub/sub
        run.finish("complete")
        got = await read_stream(resp, within=10)
        cancel = await client.post("/v1/runs/acl2/cancel", headers=headers)
        assert cancel.status in (200, 202, 409), await cancel.text()  # its script may run
    assert [e.event for e in got.events] == ["phase", "phase", "step", "phase", "terminal"]
    service = redis.Redis.from_url(acl_redis["service"])
    try:
        for attempt in (lambda: service.flushall(), lambda: service.keys("*")):
            with pytest.raises(NoPermissionError):
                attempt()
    finally:
        service.close()


# -- systemd -------------------------------------------------------------------------------


def unit_settings() -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in (DEPLOY / "mantis-events.service").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "[")):
            continue
        key, _, value = line.partition("=")
        values.setdefault(key, []).append(value)
    return values


def test_the_unit_is_hardened() -> None:
    unit = unit_settings()
    required = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "CapabilityBoundingSet": "",
        "ProtectHome": "yes",
        "PrivateDevices": "yes",
        "RestrictSUIDSGID": "yes",
    }
    for key, value in required.items():
        assert unit.get(key) == [value], f"{key}={value} missing from the unit"
    assert set(unit["RestrictAddressFamilies"][0].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert unit["MemoryMax"] and unit["User"] != ["root"]
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return  # the parse above is the check on machines without systemd
    unit_path = DEPLOY / "mantis-events.service"
    done = subprocess.run(
        [analyze, "security", "--offline=yes", "--threshold=20", str(unit_path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", done.stdout)
    assert match is not None, done.stdout[-2000:] + done.stderr[-2000:]
    assert float(match.group(1)) <= 2.0, done.stdout[-3000:]
    assert done.returncode == 0


def test_the_stop_timeout_leaves_room_for_the_drain() -> None:
    stop_s = float(unit_settings()["TimeoutStopSec"][0])
    drain_s = Settings.from_env({}).drain_s
    assert stop_s >= drain_s + SHUTDOWN_GRACE_S + 10


# -- haproxy ----------------------------------------------------------------------------


def test_the_haproxy_config_checks_readiness_and_outlasts_the_heartbeat() -> None:
    text = (DEPLOY / "haproxy.cfg").read_text()
    lines = [line.split("#")[0].strip() for line in text.splitlines()]
    assert "option httpchk GET /readyz" in lines
    assert "option redispatch 1" in lines
    assert any(line.startswith("retries ") and int(line.split()[1]) >= 2 for line in lines)
    heartbeat = Settings.from_env({}).heartbeat_s

    def seconds(name: str) -> float:
        found = [line for line in lines if line.startswith(f"timeout {name} ")]
        assert found, f"timeout {name} missing"
        value = found[0].split()[2]
        return float(value[:-1]) * (60 if value.endswith("m") else 1)

    assert seconds("client") >= 2 * heartbeat and seconds("server") >= 2 * heartbeat
    default_server = next(line for line in lines if line.startswith("default-server "))
    words = default_server.split()
    inter = float(words[words.index("inter") + 1].rstrip("s"))
    fall = int(words[words.index("fall") + 1])
    # Out of rotation before the drain ends: no new client lands on a pod about to stop.
    assert inter * fall < Settings.from_env({}).drain_s
    haproxy = shutil.which("haproxy")
    if haproxy is not None:
        done = subprocess.run(
            [haproxy, "-c", "-f", str(DEPLOY / "haproxy.cfg")],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        assert done.returncode == 0, done.stdout + done.stderr


def test_the_env_example_is_a_valid_exposed_configuration() -> None:
    env = {}
    for line in (DEPLOY / "events.env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            env[name] = value
    settings = Settings.from_env(env)
    assert not settings.loopback_only
    assert settings.exposure_problems() == []
    assert settings.drain_s + SHUTDOWN_GRACE_S + 10 <= float(unit_settings()["TimeoutStopSec"][0])
