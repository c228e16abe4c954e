"""CONTRACT section 6, SDK: predict/status/get_run/result/cancel/wait, sync and async,
against ``python -m service`` on a real redis-server; a runner is simulated with
``runner_bridge.Bridge``. Includes the seed's snippet exactly as documented."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from mantis_agent import (
    AsyncMantisClient,
    IdempotencyKeyReused,
    PayloadTooLarge,
    RunExists,
    RunFinished,
    RunHandle,
    RunNotFound,
    WaitTimeout,
)
from mantis_agent._runs import ResultGatherer, RunsApi, Waiter
from mantis_agent._settings import ClientSettings
from mantis_agent.client import MantisClient
from runlog.calls import LogLimits
from runner_bridge import Bridge

from .conftest import TOKENS, ServiceProcess

PLAN = {"_micro_plan": [{"type": "click", "target": "#a"}, {"type": "extract", "row": {"k": 1}}]}


@pytest.fixture
def service(redis_url: str, spawn_service: Callable[..., ServiceProcess]) -> ServiceProcess:
    return spawn_service(redis_url)


@pytest.fixture
def bridge(redis_url: str) -> Iterator[Bridge]:
    with Bridge.from_url(redis_url, limits=LogLimits()) as b:
        yield b


@pytest.fixture
def env(service: ServiceProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MANTIS_ENDPOINT", service.base)
    monkeypatch.setenv("MANTIS_API_TOKEN", TOKENS["acme"])


def runner(bridge: Bridge, run_id: str, rows: int) -> list[dict[str, Any]]:
    """A worker's part: running, a step and an extract per row, complete."""
    run = bridge.run(run_id)
    run.set_phase("running")
    extracted = []
    for i in range(rows):
        run.append({"kind": "step", "type": "click", "step_index": i})
        row = {"i": i}
        run.append({"kind": "extract", "row": row})
        extracted.append(row)
    run.finish("complete")
    return extracted


def test_the_seed_snippet_works_as_written(env: None, bridge: Bridge) -> None:
    client = MantisClient.from_env()
    handle = client.predict({"task_suite": {"_micro_plan": [{"type": "click", "target": "#a"}]}})
    assert isinstance(handle, RunHandle) and handle.phase == "queued"
    worker = threading.Thread(target=runner, args=(bridge, handle.run_id, 3))
    worker.start()
    events = list(client.stream_events(handle.run_id))
    worker.join(timeout=30)
    client.close()
    names = [e["event"] for e in events]
    assert names[0] == "phase" and events[0]["data"]["phase"] == "queued"
    assert names[-2:] == ["phase", "terminal"]
    assert names.count("extract") == 3


def test_sync_runs_api(service: ServiceProcess, bridge: Bridge) -> None:
    with MantisClient(service.base, TOKENS["acme"]) as client:
        handle = client.predict({"task_suite": PLAN, "run_id": "sdk-1", "metadata": {"m": 1}})
        assert (handle.run_id, handle.phase, handle.replayed) == ("sdk-1", "queued", False)
        assert handle.events_url == "/v1/runs/sdk-1/events"
        assert handle.run["events"] == 1 and handle.run["poll_after_ms"] == 1000
        with pytest.raises(RunExists) as exists:
            client.predict({"task_suite": PLAN, "run_id": "sdk-1"})
        assert exists.value.status == 409 and exists.value.code == "run_exists"

        rows = runner(bridge, "sdk-1", 5)
        assert client.status("sdk-1")["phase"] == "complete"
        assert client.get_run("sdk-1")["rows"] == 5
        whole = client.result("sdk-1", limit=2)  # three pages, gathered
        assert whole["rows"] == rows and whole["done"] is True and whole["next_cursor"] is None
        first = client.result_page("sdk-1", limit=2)
        assert first["rows"] == rows[:2] and first["more"] is True
        rest = client.result_page("sdk-1", first["next_cursor"], limit=10)
        assert rest["rows"] == rows[2:]
        assert client.wait("sdk-1")["phase"] == "complete"

        queued = client.predict({"task_suite": PLAN})
        assert client.cancel(queued.run_id)["phase"] == "cancelled"
        with pytest.raises(RunFinished):
            client.cancel(queued.run_id)
        with pytest.raises(RunNotFound):
            client.status("no-such-run")


def test_sync_idempotency_and_size_errors(service: ServiceProcess) -> None:
    with MantisClient(service.base, TOKENS["acme"]) as client:
        first = client.predict({"task_suite": PLAN}, idempotency_key="k-1")
        again = client.predict({"task_suite": PLAN}, idempotency_key="k-1")
        assert again.run_id == first.run_id and again.replayed and not first.replayed
        with pytest.raises(IdempotencyKeyReused) as reused:
            client.predict({"task_suite": {"other": 1}}, idempotency_key="k-1")
        assert reused.value.status == 422
        with pytest.raises(PayloadTooLarge):
            client.predict({"task_suite": {"blob": "x" * (1024 * 1024)}})


def test_sync_wait_follows_the_hint_and_times_out(service: ServiceProcess, bridge: Bridge) -> None:
    polls: list[httpx.Request] = []
    handle_box: list[str] = []

    def finish_after_first_poll(response: httpx.Response) -> None:
        # The run ends right after the first poll saw it running: wait must poll again.
        if response.request.method == "GET":
            polls.append(response.request)
            if len(polls) == 1:
                bridge.run(handle_box[0]).finish("halted", halt_class="captcha")

    http = httpx.Client(event_hooks={"response": [finish_after_first_poll]})
    with MantisClient(service.base, TOKENS["acme"], http=http) as client:
        handle = client.predict({"task_suite": PLAN})
        bridge.run(handle.run_id).set_phase("running")
        handle_box.append(handle.run_id)
        final = client.wait(handle.run_id, timeout=20)
        assert final["phase"] == "halted" and final["halt_class"] == "captcha"
        assert len(polls) == 2
        assert polls[1].headers.get("If-None-Match")  # the second poll was conditional

        stuck = client.predict({"task_suite": PLAN})
        with pytest.raises(WaitTimeout) as timed_out:
            client.wait(stuck.run_id, timeout=0.2)
        assert isinstance(timed_out.value, TimeoutError)
    http.close()


async def test_async_runs_api(service: ServiceProcess, bridge: Bridge) -> None:
    async with AsyncMantisClient(service.base, TOKENS["acme"]) as client:
        handle = await client.predict({"task_suite": PLAN}, idempotency_key="a-1")
        again = await client.predict({"task_suite": PLAN}, idempotency_key="a-1")
        assert again.run_id == handle.run_id and again.replayed
        with pytest.raises(IdempotencyKeyReused):
            await client.predict({"task_suite": {}}, idempotency_key="a-1")
        with pytest.raises(RunExists):
            await client.predict({"task_suite": PLAN, "run_id": handle.run_id})

        bridge.run(handle.run_id).set_phase("running")
        requested = await client.cancel(handle.run_id)
        assert requested["cancel_requested"] is True and requested["phase"] == "running"
        assert (await client.get_run(handle.run_id))["cancel_requested"] is True
        bridge.run(handle.run_id).finish("cancelled")
        with pytest.raises(RunFinished):
            await client.cancel(handle.run_id)
        assert (await client.wait(handle.run_id, timeout=5))["phase"] == "cancelled"

        second = await client.predict({"task_suite": PLAN})
        with pytest.raises(WaitTimeout):
            await client.wait(second.run_id, timeout=0.2)
        rows = runner(bridge, second.run_id, 4)
        whole = await client.result(second.run_id, limit=3)
        assert whole["rows"] == rows and whole["done"] is True
        page = await client.result_page(second.run_id, limit=3)
        assert page["rows"] == rows[:3]
        assert (await client.status(second.run_id))["steps"] == 4
        with pytest.raises(PayloadTooLarge):
            await client.predict({"task_suite": {"blob": "x" * (1024 * 1024)}})


async def test_async_seed_snippet(service: ServiceProcess, bridge: Bridge) -> None:
    async with AsyncMantisClient(service.base, TOKENS["acme"]) as client:
        handle = await client.predict({"task_suite": {"_micro_plan": []}})
        worker = threading.Thread(target=runner, args=(bridge, handle.run_id, 2))
        worker.start()
        names = [e["event"] async for e in client.stream_events(handle.run_id)]
        worker.join(timeout=30)
    assert names == ["phase", "phase", "step", "extract", "step", "extract", "phase", "terminal"]


# -- the sans-I/O core, driven with made-up answers and a made-up clock --------------------


def _answer(status: int, body: Any = None, **headers: str) -> httpx.Response:
    request = httpx.Request("GET", "http://127.0.0.1:1/v1/runs/r1")
    if body is None:
        return httpx.Response(status, headers=headers, request=request)
    return httpx.Response(status, json=body, headers=headers, request=request)


def _api() -> RunsApi:
    return RunsApi(ClientSettings("http://127.0.0.1:1", "tok"))


def test_waiter_sleeps_as_hinted_uses_the_etag_and_stops_at_terminal() -> None:
    now = [100.0]
    waiter = Waiter(_api(), "r1", timeout=None, clock=lambda: now[0])
    assert "If-None-Match" not in waiter.request().kwargs["headers"]
    running = {"run_id": "r1", "phase": "running", "poll_after_ms": 2500}
    assert waiter.delay_after(_answer(200, running, ETag='"t1"')) == 2.5
    assert waiter.request().kwargs["headers"]["If-None-Match"] == '"t1"'
    # 304: no body; the hint comes from Retry-After, the last object is kept.
    assert waiter.delay_after(_answer(304, None, ETag='"t1"', **{"Retry-After": "7"})) == 7.0
    assert waiter.run == running
    done = {"run_id": "r1", "phase": "complete", "poll_after_ms": None}
    assert waiter.delay_after(_answer(200, done, ETag='"t2"')) is None
    assert waiter.final() == done


def test_waiter_never_sleeps_past_its_deadline_then_times_out() -> None:
    now = [0.0]
    waiter = Waiter(_api(), "r1", timeout=10.0, clock=lambda: now[0])
    running = {"run_id": "r1", "phase": "queued", "poll_after_ms": 30000}
    assert waiter.delay_after(_answer(200, running)) == 10.0
    now[0] = 9.0
    assert waiter.delay_after(_answer(200, running)) == pytest.approx(1.0)
    now[0] = 10.0
    with pytest.raises(WaitTimeout, match="still queued"):
        waiter.delay_after(_answer(200, running))
    with pytest.raises(RuntimeError):
        waiter.final()


def test_gatherer_follows_pages_while_more_and_stops_on_a_stuck_cursor() -> None:
    gatherer = ResultGatherer(_api(), "r1", limit=2)
    page = {"done": False, "rows": [1, 2], "next_cursor": "e-1", "more": True}
    assert gatherer.take(_answer(200, page)) is True
    assert gatherer.request().kwargs["json"] == {
        "action": "result",
        "run_id": "r1",
        "cursor": "e-1",
        "limit": 2,
    }
    assert gatherer.take(_answer(200, {**page, "rows": [3]})) is False  # same cursor: stop
    assert gatherer.answer()["rows"] == [1, 2, 3]
    last = ResultGatherer(_api(), "r1", limit=None)
    assert last.take(_answer(200, {"done": True, "rows": [], "next_cursor": None})) is False
