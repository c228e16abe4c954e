"""CONTRACT section 6: ``POST /v1/predict`` (submit, status, result, cancel) on a real redis.

A runner is simulated with ``runner_bridge.Bridge`` on the same store.
"""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

from runlog.calls import LogLimits
from runlog.keys import QUEUE_GROUP, queue_key, request_key
from runner_bridge import Bridge

from .conftest import TOKENS

PREDICT = "/v1/predict"
SUITE = {"_micro_plan": [{"type": "click", "target": "#go"}]}


@pytest.fixture
def store_url(redis_url: str) -> str:
    """These tests run on the real redis-server only."""
    return redis_url


@pytest.fixture
def rdb(redis_url: str) -> Any:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


async def post(svc: Any, body: Any, tenant: str = "acme", **headers: str) -> tuple[int, Any, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    resp = await svc.client.post(
        PREDICT,
        # A file-like body: aiohttp warns about large raw bytes (and still sends a length).
        data=io.BytesIO(data),
        headers=svc.headers(tenant, **{"Content-Type": "application/json", **headers}),
    )
    return resp.status, await resp.json(), resp.headers


def error_code(body: Any) -> str:
    assert set(body) == {"error"}, body
    return str(body["error"]["code"])


RUN_KEYS = {
    "run_id",
    "phase",
    "created_at",
    "updated_at",
    "halt_class",
    "events",
    "last_event_id",
    "cancel_requested",
    "steps",
    "rows",
    "poll_after_ms",
}


# -- submit -------------------------------------------------------------------------------


async def test_submit_creates_a_queued_run_keeps_the_request_and_queues_it(
    make_service, rdb: Any
) -> None:
    svc = await make_service()
    status, body, headers = await post(svc, {"task_suite": SUITE, "metadata": {"who": "t"}})
    assert status == 202, body
    run_id = body["run_id"]
    assert run_id.startswith("r_") and len(run_id) > 10
    assert headers["Location"] == f"/v1/runs/{run_id}"
    assert body["events_url"] == f"/v1/runs/{run_id}/events"
    assert set(body) == RUN_KEYS | {"events_url"}
    assert body["phase"] == "queued" and body["events"] == 1
    assert body["last_event_id"].endswith("-0000000001")
    assert body["cancel_requested"] is False and body["halt_class"] is None
    assert body["poll_after_ms"] == 1000 and headers["Retry-After"] == "1"
    assert "Idempotent-Replayed" not in headers
    stored = json.loads(rdb.get(request_key(run_id)))
    assert stored == {
        "run_id": run_id,
        "tenant": "acme",
        "task_suite": SUITE,
        "metadata": {"who": "t"},
    }
    queued = rdb.xrange(queue_key())
    assert [fields[b"run_id"].decode() for _id, fields in queued] == [run_id]
    # The Location answers the cheap poll with the same object.
    poll = await svc.client.get(headers["Location"], headers=svc.headers())
    assert (await poll.json())["run_id"] == run_id
    page = await (await svc.client.get(body["events_url"], headers=svc.headers())).json()
    assert [e["event"] for e in page["events"]] == ["phase"]
    assert page["events"][0]["data"]["phase"] == "queued"


async def test_submit_with_a_taken_run_id_is_409_run_exists(make_service, rdb: Any) -> None:
    svc = await make_service()
    status, body, _ = await post(svc, {"task_suite": SUITE, "run_id": "mine-1"})
    assert status == 202 and body["run_id"] == "mine-1"
    status, body, _ = await post(svc, {"task_suite": {"other": 1}, "run_id": "mine-1"})
    assert status == 409 and error_code(body) == "run_exists"
    # Another tenant cannot take it either, and learns nothing else.
    status, body, _ = await post(svc, {"task_suite": SUITE, "run_id": "mine-1"}, tenant="other")
    assert status == 409 and error_code(body) == "run_exists"
    assert rdb.xlen(queue_key()) == 1


# -- the full flow: submit, a runner, the stream, the result --------------------------------


def run_as_runner(url: str, run_id: str, rows: int) -> list[dict[str, Any]]:
    """What a worker does with a submitted run: running, steps and extracts, complete."""
    extracted = []
    with Bridge.from_url(url, limits=LogLimits()) as bridge:
        run = bridge.run(run_id)
        run.set_phase("running")
        for i in range(rows):
            run.append({"kind": "step", "type": "click", "step_index": i})
            row = {"i": i, "name": f"item {i}"}
            run.append({"kind": "extract", "row": row})
            extracted.append(row)
        run.finish("complete")
    return extracted


async def test_submit_run_stream_and_result_paged(make_service, redis_url: str) -> None:
    svc = await make_service()
    status, body, _ = await post(svc, {"task_suite": SUITE})
    assert status == 202
    run_id = body["run_id"]
    rows = await asyncio.to_thread(run_as_runner, redis_url, run_id, 7)

    resp = await svc.client.get(
        f"/v1/runs/{run_id}/events", headers=svc.headers(), params={"sse": "true"}
    )
    text = await resp.text()
    assert resp.status == 200
    names = [line[len("event: ") :] for line in text.splitlines() if line.startswith("event: ")]
    assert names == ["phase", "phase"] + ["step", "extract"] * 7 + ["phase", "terminal"]

    gathered: list[Any] = []
    cursor: str | None = ""
    pages = 0
    while cursor is not None:
        status, page, _ = await post(
            svc, {"action": "result", "run_id": run_id, "limit": 3, "cursor": cursor}
        )
        assert status == 200, page
        assert set(page) == {"run_id", "phase", "halt_class", "done", "rows", "next_cursor", "more"}
        assert page["done"] is True and page["phase"] == "complete"
        assert "poll_after_ms" not in page
        assert len(page["rows"]) <= 3
        gathered += page["rows"]
        cursor = page["next_cursor"]
        pages += 1
        assert pages <= 5
    assert gathered == rows
    assert pages == 3

    status, whole, _ = await post(svc, {"action": "result", "run_id": run_id})
    assert whole["rows"] == rows and whole["next_cursor"] is None and whole["more"] is False

    status, state, headers = await post(svc, {"action": "status", "run_id": run_id})
    assert status == 200 and state["phase"] == "complete"
    assert state["steps"] == 7 and state["rows"] == 7 and state["events"] == 2 + 14 + 2
    assert state["poll_after_ms"] is None and "Retry-After" not in headers


async def test_result_of_a_running_run_says_what_it_has_and_when_to_ask_again(
    make_service, bridge: Bridge
) -> None:
    svc = await make_service()
    await post(svc, {"task_suite": SUITE, "run_id": "going"})
    run = bridge.run("going")
    run.set_phase("running")
    run.append({"kind": "extract", "row": {"a": 1}})
    status, page, _ = await post(svc, {"action": "result", "run_id": "going"})
    assert status == 200
    assert page["done"] is False and page["rows"] == [{"a": 1}] and page["more"] is False
    assert page["poll_after_ms"] == 1000
    run.append({"kind": "step", "type": "scroll"})
    run.append({"kind": "extract", "row": {"a": 2}})
    _, later, _ = await post(
        svc, {"action": "result", "run_id": "going", "cursor": page["next_cursor"]}
    )
    assert later["rows"] == [{"a": 2}] and later["done"] is False
    run.finish("complete")
    _, last, _ = await post(
        svc, {"action": "result", "run_id": "going", "cursor": later["next_cursor"]}
    )
    assert last == {
        "run_id": "going",
        "phase": "complete",
        "halt_class": None,
        "done": True,
        "rows": [],
        "next_cursor": None,
        "more": False,
    }


async def test_result_cursor_must_be_from_this_log(make_service, bridge: Bridge) -> None:
    svc = await make_service()
    await post(svc, {"task_suite": SUITE, "run_id": "cur"})
    for cursor in ("nonsense", "2026-01-01T00:00:00Z", "zzzzzzzzzzz-0000000001"):
        status, body, _ = await post(svc, {"action": "result", "run_id": "cur", "cursor": cursor})
        assert status == 400 and error_code(body) == "invalid_cursor", cursor


# -- idempotency ---------------------------------------------------------------------------


async def test_idempotent_submit_replays_the_first_answer(make_service, rdb: Any) -> None:
    svc = await make_service()
    key = {"Idempotency-Key": "order-42"}
    first = await post(svc, {"task_suite": SUITE, "metadata": {"a": 1, "b": 2}}, **key)
    assert first[0] == 202 and "Idempotent-Replayed" not in first[2]
    # Same body (keys in another order, other spacing): the same answer, nothing created.
    raw = b'{ "metadata": {"b": 2, "a": 1},  "task_suite": ' + json.dumps(SUITE).encode() + b"}"
    again = await post(svc, raw, **key)
    assert again[0] == 202
    assert again[1]["run_id"] == first[1]["run_id"]
    assert again[2]["Idempotent-Replayed"] == "true"
    assert again[2]["Location"] == first[2]["Location"]
    assert rdb.xlen(queue_key()) == 1
    # Same key, another body: refused, nothing created.
    status, body, _ = await post(svc, {"task_suite": {"other": True}}, **key)
    assert status == 422 and error_code(body) == "idempotency_key_reused"
    assert rdb.xlen(queue_key()) == 1
    # The key belongs to its tenant: another tenant's use of it is a new submit.
    status, body, headers = await post(svc, {"task_suite": SUITE}, tenant="other", **key)
    assert status == 202 and "Idempotent-Replayed" not in headers
    assert body["run_id"] != first[1]["run_id"]
    assert rdb.xlen(queue_key()) == 2


async def test_twenty_concurrent_submits_with_one_key_create_one_run(
    make_service, rdb: Any
) -> None:
    svc = await make_service()
    body = {"task_suite": SUITE}
    answers = await asyncio.gather(
        *(post(svc, body, **{"Idempotency-Key": "burst"}) for _ in range(20))
    )
    assert {status for status, _, _ in answers} == {202}
    assert len({b["run_id"] for _, b, _ in answers}) == 1
    fresh = [h for _, _, h in answers if "Idempotent-Replayed" not in h]
    assert len(fresh) == 1
    assert rdb.xlen(queue_key()) == 1
    assert len(list(rdb.scan_iter(match="mantis:{r_*}:meta"))) == 1


@pytest.mark.parametrize("key", ["", "x" * 256, "has space", "tab\there"])
async def test_a_malformed_idempotency_key_is_400_naming_the_header(make_service, key: str) -> None:
    svc = await make_service()
    status, body, _ = await post(svc, {"task_suite": SUITE}, **{"Idempotency-Key": key})
    assert status == 400 and error_code(body) == "invalid_request"
    assert "Idempotency-Key" in body["error"]["message"]


# -- cancel --------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["predict", "runs"])
async def test_cancel_in_each_state(make_service, bridge: Bridge, route: str) -> None:
    svc = await make_service()

    async def cancel(run_id: str) -> tuple[int, Any]:
        if route == "predict":
            status, body, _ = await post(svc, {"action": "cancel", "run_id": run_id})
            return status, body
        resp = await svc.client.post(f"/v1/runs/{run_id}/cancel", headers=svc.headers())
        return resp.status, await resp.json()

    # queued -> cancelled at once, phase and terminal written
    await post(svc, {"task_suite": SUITE, "run_id": "q"})
    status, body = await cancel("q")
    assert status == 200 and body["phase"] == "cancelled" and body["poll_after_ms"] is None
    page = await (await svc.client.get("/v1/runs/q/events", headers=svc.headers())).json()
    assert [e["event"] for e in page["events"]] == ["phase", "phase", "terminal"]
    assert page["done"] is True

    # running -> requested; asking again changes nothing; the runner then finishes it
    await post(svc, {"task_suite": SUITE, "run_id": "r"})
    run = bridge.run("r")
    run.set_phase("running")
    status, body = await cancel("r")
    assert status == 202 and body["phase"] == "running" and body["cancel_requested"] is True
    status, body = await cancel("r")
    assert status == 202 and body["cancel_requested"] is True
    run.finish("cancelled")

    # terminal -> 409 run_finished
    for run_id in ("q", "r"):
        status, body = await cancel(run_id)
        assert status == 409 and error_code(body) == "run_finished"

    # recovering -> requested too
    await post(svc, {"task_suite": SUITE, "run_id": "rec"})
    rec = bridge.run("rec")
    rec.set_phase("running")
    rec.set_phase("recovering")
    status, body = await cancel("rec")
    assert status == 202 and body["phase"] == "recovering" and body["cancel_requested"] is True


async def test_queue_entry_of_a_cancelled_run_stays_for_workers_to_skip(
    make_service, rdb: Any
) -> None:
    svc = await make_service()
    await post(svc, {"task_suite": SUITE, "run_id": "gone"})
    await post(svc, {"action": "cancel", "run_id": "gone"})
    rdb.xgroup_create(queue_key(), QUEUE_GROUP, id="0", mkstream=True)
    got = rdb.xreadgroup(QUEUE_GROUP, "w1", {queue_key(): ">"}, count=10)
    assert [f[b"run_id"] for _id, f in got[0][1]] == [b"gone"]


# -- errors --------------------------------------------------------------------------------

BAD_BODIES: list[tuple[Any, int, str, str]] = [
    (b"not json", 400, "invalid_json", "JSON"),
    (b"", 400, "invalid_json", "JSON"),
    (b"[1, 2]", 400, "invalid_json", "object"),
    (b'"text"', 400, "invalid_json", "object"),
    ({"action": "explode", "run_id": "x"}, 400, "invalid_action", "action"),
    ({"action": 7}, 400, "invalid_action", "action"),
    ({}, 400, "invalid_request", "task_suite"),
    ({"task_suite": [1]}, 400, "invalid_request", "task_suite"),
    ({"task_suite": "plan"}, 400, "invalid_request", "task_suite"),
    ({"task_suite": {}, "metadata": "m"}, 400, "invalid_request", "metadata"),
    ({"task_suite": {}, "run_id": 12}, 400, "invalid_request", "run_id"),
    ({"task_suite": {}, "run_id": "bad id!"}, 400, "invalid_request", "run_id"),
    ({"task_suite": {}, "run_id": "x" * 129}, 400, "invalid_request", "run_id"),
    ({"action": "status"}, 400, "invalid_request", "run_id"),
    ({"action": "cancel", "run_id": ["x"]}, 400, "invalid_request", "run_id"),
    ({"action": "result", "run_id": "x", "limit": 0}, 400, "invalid_request", "limit"),
    ({"action": "result", "run_id": "x", "limit": 10_001}, 400, "invalid_request", "limit"),
    ({"action": "result", "run_id": "x", "limit": "5"}, 400, "invalid_request", "limit"),
    ({"action": "result", "run_id": "x", "limit": True}, 400, "invalid_request", "limit"),
    ({"action": "result", "run_id": "x", "cursor": 5}, 400, "invalid_request", "cursor"),
    ({"action": "status", "run_id": "nope"}, 404, "run_not_found", "nope"),
    ({"action": "result", "run_id": "nope"}, 404, "run_not_found", "nope"),
    ({"action": "cancel", "run_id": "nope"}, 404, "run_not_found", "nope"),
]


@pytest.mark.parametrize(("body", "status", "code", "named"), BAD_BODIES)
async def test_bad_requests_name_what_was_wrong(
    make_service, body: Any, status: int, code: str, named: str
) -> None:
    svc = await make_service()
    got, answer, _ = await post(svc, body)
    assert got == status and error_code(answer) == code, answer
    assert named in answer["error"]["message"]


async def test_another_tenants_run_is_not_found_for_every_action(make_service) -> None:
    svc = await make_service()
    await post(svc, {"task_suite": SUITE, "run_id": "theirs"}, tenant="other")
    for action in ("status", "result", "cancel"):
        status, body, _ = await post(svc, {"action": action, "run_id": "theirs"})
        assert status == 404 and error_code(body) == "run_not_found", action
    resp = await svc.client.get("/v1/runs/theirs", headers=svc.headers())
    assert resp.status == 404
    resp = await svc.client.post("/v1/runs/theirs/cancel", headers=svc.headers())
    assert resp.status == 404
    status, body, _ = await post(svc, {"action": "status", "run_id": "theirs"}, tenant="other")
    assert status == 200 and body["phase"] == "queued"


async def test_predict_needs_the_tenant_token(make_service) -> None:
    svc = await make_service()
    resp = await svc.client.post(PREDICT, json={"task_suite": SUITE})
    assert resp.status == 401 and error_code(await resp.json()) == "unauthorized"
    resp = await svc.client.post(
        PREDICT, json={"task_suite": SUITE}, headers={"X-Mantis-Token": TOKENS["acme"] + "x"}
    )
    assert resp.status == 401


# -- the 1 MiB bound ---------------------------------------------------------------------


async def test_a_body_over_1_mib_is_413_from_its_content_length(make_service, rdb: Any) -> None:
    svc = await make_service()
    big = json.dumps({"task_suite": {"blob": "x" * (1024 * 1024)}}).encode()
    status, body, _ = await post(svc, big)
    assert status == 413 and error_code(body) == "payload_too_large"
    assert rdb.xlen(queue_key()) == 0
    # Exactly at the bound is accepted.
    filler = 1024 * 1024 - len(json.dumps({"task_suite": {"blob": ""}}))
    exact = json.dumps({"task_suite": {"blob": "y" * filler}}).encode()
    assert len(exact) == 1024 * 1024
    status, body, _ = await post(svc, exact)
    assert status == 202, body


async def test_a_chunked_body_is_refused_once_it_passes_1_mib_not_when_it_ends(
    make_service, rdb: Any
) -> None:
    """The client sends 1 MiB + 64 KiB of an unfinished chunked body and then stops: the
    answer can only come if the service refused it without waiting for the whole body."""
    svc = await make_service()
    url = urlsplit(svc.base)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    head = (
        f"POST {PREDICT} HTTP/1.1\r\nHost: {url.netloc}\r\n"
        f"X-Mantis-Token: {TOKENS['acme']}\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    )
    writer.write(head.encode())
    chunk = b"x" * 65536
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    for _ in range(17):
        writer.write(frame)
        await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), timeout=10)
    assert status_line.split()[1] == b"413", status_line
    writer.close()
    await writer.wait_closed()
    assert rdb.xlen(queue_key()) == 0


async def test_submit_and_cancel_survive_a_store_that_lost_its_scripts(
    make_service, rdb: Any
) -> None:
    svc = await make_service()
    status, _, _ = await post(svc, {"task_suite": SUITE, "run_id": "s1"})
    assert status == 202
    rdb.script_flush()
    answers = await asyncio.gather(
        *(post(svc, {"task_suite": SUITE, "run_id": f"s{i}"}) for i in range(2, 6))
    )
    assert [status for status, _, _ in answers] == [202] * 4
    assert rdb.xlen(queue_key()) == 5  # each submit ran exactly once
    rdb.script_flush()
    status, body, _ = await post(svc, {"action": "cancel", "run_id": "s1"})
    assert status == 200 and body["phase"] == "cancelled"


async def test_every_route_answers_503_while_the_store_is_down(aiohttp_client) -> None:
    from service.app import create_app
    from service.auth import TokenTable
    from service.settings import Settings

    from .conftest import TOKEN_SPEC
    from .redis_server import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"
    app = create_app(
        Settings(tenant_tokens=TOKEN_SPEC, redis_url=url), TokenTable.parse(TOKEN_SPEC), url
    )
    client = await aiohttp_client(app, server_kwargs={"host": "127.0.0.1"})
    headers = {"X-Mantis-Token": TOKENS["acme"]}
    answers = [
        await client.get("/v1/runs/r1", headers=headers),
        await client.post("/v1/runs/r1/cancel", headers=headers),
        await client.post(PREDICT, json={"task_suite": SUITE}, headers=headers),
        await client.post(PREDICT, json={"action": "result", "run_id": "r1"}, headers=headers),
    ]
    for resp in answers:
        assert resp.status == 503, await resp.text()
        assert error_code(await resp.json()) == "unavailable"
        assert resp.headers["Retry-After"]


async def test_concurrent_submits_with_one_key_through_two_pods_create_one_run(
    make_service, rdb: Any
) -> None:
    """Each pod coalesces its own requests; across pods only the script's atomicity helps."""
    pods = [await make_service(), await make_service()]
    answers = await asyncio.gather(
        *(
            post(pods[i % 2], {"task_suite": SUITE}, **{"Idempotency-Key": "two-pods"})
            for i in range(20)
        )
    )
    assert {status for status, _, _ in answers} == {202}
    assert len({body["run_id"] for _, body, _ in answers}) == 1
    assert sum(1 for _, _, h in answers if "Idempotent-Replayed" not in h) == 1
    assert rdb.xlen(queue_key()) == 1


def test_the_submit_script_alone_is_atomic_under_20_threads(redis_url: str) -> None:
    """20 threads, 20 connections, one key: exactly one ``created``, with no service at all."""
    import threading

    from runlog.calls import submit_call

    barrier = threading.Barrier(20)
    outcomes: list[bytes] = []

    def submit(i: int) -> None:
        client = redis.Redis.from_url(redis_url)
        source, keys, args = submit_call(
            f"t{i}", "acme", b"{}", LogLimits(), idempotency_digest="k" * 64, body_digest="b"
        )
        script = client.register_script(source)
        barrier.wait(timeout=10)
        outcomes.append(script(keys=keys, args=args)[0])
        client.close()

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(outcomes) == [b"created"] + [b"replayed"] * 19
