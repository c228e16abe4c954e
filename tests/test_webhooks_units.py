"""Webhook pieces without I/O: address policy, settings, retry delays, payload, signature."""

from __future__ import annotations

import time

import orjson
import pytest
from standardwebhooks import Webhook

from service.settings import Settings, SettingsError
from service.webhooks.dispatcher import JITTER, lease_for, retry_delay
from service.webhooks.guard import AddressPolicy, InvalidWebhookUrl
from service.webhooks.model import Endpoint, delivery_view, new_secret, payload
from service.webhooks.sender import headers_for
from service.webhooks.store import Claim

BLOCKED = [
    "127.0.0.1", "127.8.9.10", "::1", "10.0.0.1", "172.16.5.4", "192.168.1.1",
    "169.254.169.254", "169.254.1.1", "fe80::1", "fd00:ec2::254", "fc00::1",
    "224.0.0.1", "239.255.255.250", "ff02::1", "0.0.0.0", "::", "240.0.0.1",
    "255.255.255.255", "100.64.0.1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "192.0.2.1",
    "not-an-ip",
]
ALLOWED = ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"]


@pytest.mark.parametrize("address", BLOCKED)
def test_blocked_addresses(address: str) -> None:
    assert AddressPolicy().blocked(address)
    assert not AddressPolicy(allow_private=True).blocked(address)


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses(address: str) -> None:
    assert not AddressPolicy().blocked(address)


def test_url_forms() -> None:
    policy = AddressPolicy()
    assert str(policy.parse("https://example.com/h?x=1")) == "https://example.com/h?x=1"
    for bad in ("http://example.com/", "example.com", "https:///x", "https://a:b@example.com/",
                "https://example.com:99999/", "x" * 3000):
        with pytest.raises(InvalidWebhookUrl) as info:
            policy.parse(bad)
        assert str(info.value).startswith("url")
    assert AddressPolicy(allow_http=True).parse("http://example.com/").scheme == "http"


def test_settings() -> None:
    s = Settings.from_env({})
    assert s.webhook_retry_s == (5, 30, 120, 600, 1800, 7200, 21600)
    assert (s.webhook_concurrency, s.webhook_allow_private, s.webhook_allow_http) == (
        64, False, False)
    assert s.webhook_timeout_s == 10
    s = Settings.from_env({"MANTIS_WEBHOOK_RETRY_S": "0.2, 0.2", "MANTIS_WEBHOOK_ALLOW_HTTP": "1",
                           "MANTIS_WEBHOOK_ALLOW_PRIVATE": "true"})
    assert s.webhook_retry_s == (0.2, 0.2)
    assert s.webhook_allow_http and s.webhook_allow_private
    for env, name in [
        ({"MANTIS_WEBHOOK_RETRY_S": "5,soon"}, "MANTIS_WEBHOOK_RETRY_S"),
        ({"MANTIS_WEBHOOK_RETRY_S": "-1"}, "MANTIS_WEBHOOK_RETRY_S"),
        ({"MANTIS_WEBHOOK_RETRY_S": ",".join(["1"] * 21)}, "MANTIS_WEBHOOK_RETRY_S"),
        ({"MANTIS_WEBHOOK_ALLOW_HTTP": "maybe"}, "MANTIS_WEBHOOK_ALLOW_HTTP"),
        ({"MANTIS_WEBHOOK_CONCURRENCY": "0"}, "MANTIS_WEBHOOK_CONCURRENCY"),
    ]:
        with pytest.raises(SettingsError, match=name):
            Settings.from_env(env)


def test_retry_delays_and_jitter() -> None:
    delays = (5.0, 30.0)
    for _ in range(200):
        first = retry_delay(delays, 1)
        second = retry_delay(delays, 2)
        assert first is not None and abs(first - 5.0) <= 5.0 * JITTER
        assert second is not None and abs(second - 30.0) <= 30.0 * JITTER
    assert retry_delay(delays, 3) is None
    assert retry_delay((), 1) is None
    assert lease_for(10) > 10


def _claim(secret: str) -> Claim:
    endpoint = Endpoint(id="wh_0123456789abcdef", url="https://example.com/h",
                        events=("run.finished",), secret=secret, created_at="x")
    data = orjson.dumps({"run_id": "r1", "phase": "complete", "halt_class": None})
    return Claim(tenant="acme", delivery_id="msg_1", claim=1, endpoint=endpoint,
                 event_type="run.finished", data=data, t_us=1_780_000_000_123_456)


def test_payload_and_signature_verify_with_standardwebhooks() -> None:
    secret = new_secret()
    claim = _claim(secret)
    body = payload(claim.event_type, claim.t_us, claim.data)
    assert orjson.loads(body) == {
        "type": "run.finished",
        "timestamp": "2026-05-28T20:26:40.123Z",
        "data": {"run_id": "r1", "phase": "complete", "halt_class": None},
    }
    headers = headers_for(claim, body, int(time.time()))
    assert headers["webhook-id"] == "msg_1"
    assert Webhook(secret).verify(body, headers)["data"]["run_id"] == "r1"
    with pytest.raises(Exception, match="signature"):
        Webhook(new_secret()).verify(body, headers)


def test_delivery_view() -> None:
    fields = {
        b"endpoint": b"wh_x", b"type": b"run.phase", b"data": b'{"run_id":"r","phase":"running"}',
        b"status": b"pending", b"claims": b"2", b"inflight": b"0", b"created_ms": b"1000",
        b"next_ms": b"5000",
        b"a:2": b'{"at_ms":3000,"status_code":null,"error":"timeout","duration_ms":10}',
        b"a:1": b'{"at_ms":2000,"status_code":500,"error":null,"duration_ms":3}',
    }
    view = delivery_view("msg_a", fields)
    assert view["run_id"] == "r" and view["phase"] == "running"
    assert [a["status_code"] for a in view["attempts"]] == [500, None]
    assert view["next_attempt_at"] == "1970-01-01T00:00:05.000Z"
    fields[b"inflight"] = b"1"
    assert delivery_view("msg_a", fields)["next_attempt_at"] is None
