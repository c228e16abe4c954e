"""The shared run-log core: the announcement codec, the tenant feed written with every
lifecycle change, and the submit and cancel scripts, on both stores."""

from __future__ import annotations

import orjson
import pytest
import redis

from runlog import announce
from runlog.calls import LogLimits, cancel_call, submit_call
from runlog.errors import InvalidTenant
from runlog.keys import feed_keys, log_key, queue_key, request_key
from runner_bridge import Bridge


@pytest.mark.parametrize(
    ("n", "t", "name", "data"),
    [(1, 0, b"phase", b'{"a":1}'), (42, 1_700_000_000_000_000, b"step", b'{"x":"a:b:c"}')],
)
def test_announcement_round_trips(n: int, t: int, name: bytes, data: bytes) -> None:
    assert announce.decode(announce.encode(n, t, name, data)) == (n, t, name, data)


def test_a_malformed_announcement_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        announce.decode(b"not an announcement")


def _feed(url: str, tenant: str) -> list[dict[str, object]]:
    client = redis.Redis.from_url(url)
    try:
        entries = client.xrange(feed_keys(tenant)[1])
    finally:
        client.close()
    return [orjson.loads(fields[b"d"]) for _id, fields in entries]


def test_every_lifecycle_change_reaches_the_tenant_feed(bridge: Bridge, store_url: str) -> None:
    run = bridge.open_run("r1", tenant="acme")
    run.set_phase("running")
    run.append({"kind": "step", "type": "click"})
    run.append({"kind": "extract", "row": {"a": 1}})
    run.finish("complete")
    feed = _feed(store_url, "acme")
    assert [item["phase"] for item in feed] == ["queued", "running", "complete"]
    last = feed[-1]
    assert last["run_id"] == "r1"
    assert last["events"] == 6  # queued, running, step, extract, complete, terminal
    assert last["steps"] == 1 and last["rows"] == 1
    assert isinstance(last["last_event_id"], str) and last["last_event_id"].endswith("-0000000006")
    assert _feed(store_url, "other") == []


def test_a_tenant_name_that_cannot_be_a_key_is_refused(bridge: Bridge) -> None:
    with pytest.raises(InvalidTenant):
        bridge.open_run("r1", tenant="a}b")


def _run(bridge: Bridge, call: tuple[str, list[str], list[object]]) -> object:
    source, keys, args = call
    return bridge.client.register_script(source)(keys=keys, args=args)


def test_submit_queues_once_per_idempotency_key(bridge: Bridge, store_url: str) -> None:
    limits = LogLimits()
    first = submit_call("s1", "acme", b'{"task_suite":{}}', limits,
                        idempotency_digest="k", body_digest="d1")
    assert _run(bridge, first) == [b"created", b"s1"]
    again = submit_call("s2", "acme", b'{"task_suite":{}}', limits,
                        idempotency_digest="k", body_digest="d1")
    assert _run(bridge, again) == [b"replayed", b"s1"]
    other_body = submit_call("s3", "acme", b"{}", limits, idempotency_digest="k", body_digest="d2")
    with pytest.raises(redis.ResponseError, match="REUSED"):
        _run(bridge, other_body)
    with pytest.raises(redis.ResponseError, match="EXISTS"):
        _run(bridge, submit_call("s1", "acme", b"{}", limits))
    client = redis.Redis.from_url(store_url)
    try:
        assert client.xlen(queue_key()) == 1
        assert client.get(request_key("s1")) == b'{"task_suite":{}}'
        assert not client.exists(log_key("s2"), log_key("s3"))
    finally:
        client.close()


def test_cancel_is_immediate_when_queued_and_a_request_when_running(bridge: Bridge) -> None:
    limits = LogLimits()
    bridge.open_run("q", tenant="acme")
    assert _run(bridge, cancel_call("q", limits))[0] == b"cancelled"  # type: ignore[index]
    with pytest.raises(redis.ResponseError, match="TERMINAL"):
        _run(bridge, cancel_call("q", limits))
    running = bridge.open_run("r", tenant="acme")
    running.set_phase("running")
    assert _run(bridge, cancel_call("r", limits))[0] == b"requested"  # type: ignore[index]
