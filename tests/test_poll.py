"""CONTRACT section 6, the cheap poll ``GET /v1/runs/{run_id}``: the backoff hint (curve,
growth, reset), the ETag and 304, and its cost in Redis commands whatever the run's size.

The clock is injected (``service.runs.now_us`` patched), so the hint's growth is shown
without sleeping.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from runlog.calls import LogLimits
from runlog.ids import parse_ts_us
from runlog.keys import meta_key
from runner_bridge import Bridge
from service import runs
from service.coalesce import meta_reads
from service.runobject import RunMeta, etag, etag_matches, poll_hint_ms, retry_after_s
from service.store_client import StoreClient

from .redis_server import free_port

CREATED = "2026-06-08T00:00:00.000Z"
T0 = parse_ts_us(CREATED)
S = 1_000_000  # one second in microseconds


@pytest.fixture
def store_url(redis_url: str) -> str:
    """These tests run on the real redis-server only (they count its commands)."""
    return redis_url


@pytest.fixture
def rdb(redis_url: str) -> Any:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


class Clock:
    """The service's wall clock, set by the test."""

    def __init__(self) -> None:
        self.now: int | None = None

    def __call__(self) -> int:
        return self.now if self.now is not None else real_now()


real_now = runs.now_us


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr("service.runs.now_us", fake)
    monkeypatch.setattr("service.predict.now_us", fake)
    return fake


# -- the curve (pure) ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quiet_s", "hint_ms"),
    [
        (0, 1000),
        (2, 1000),
        (4, 1000),
        (6, 1500),
        (20, 5000),
        (60, 15000),
        (119, 29750),
        (120, 30000),
        (3600, 30000),
        (-5, 1000),  # updated_at in the future (clock skew): as if it just changed
    ],
)
def test_the_hint_is_a_quarter_of_the_quiet_time_between_1_and_30_s(
    quiet_s: float, hint_ms: int
) -> None:
    assert poll_hint_ms(CREATED, T0 + int(quiet_s * S)) == hint_ms


def test_the_hint_never_shrinks_while_the_run_stays_quiet() -> None:
    hints = [poll_hint_ms(CREATED, T0 + t * S // 10) for t in range(0, 2000)]
    assert hints == sorted(hints)
    assert hints[0] == 1000 and hints[-1] == 30000


def test_unreadable_or_missing_updated_at_means_just_changed() -> None:
    assert poll_hint_ms(None, T0) == 1000
    assert poll_hint_ms("yesterday", T0) == 1000


@pytest.mark.parametrize(("ms", "seconds"), [(1000, 1), (1001, 2), (1500, 2), (30000, 30), (1, 1)])
def test_retry_after_is_whole_seconds_rounded_up(ms: int, seconds: int) -> None:
    assert retry_after_s(ms) == seconds


def meta(**changes: Any) -> RunMeta:
    fields: dict[str, Any] = {
        "run_id": "r1",
        "tenant": "acme",
        "phase": "running",
        "created_at": CREATED,
        "updated_at": CREATED,
        "halt_class": None,
        "epoch": "lz0abcdeabc",
        "n": 5,
        "terminal_n": None,
        "cancel_requested": False,
        "steps": 3,
        "rows": 1,
    }
    fields.update(changes)
    return RunMeta(**fields)


@pytest.mark.parametrize(
    "change",
    [
        {"phase": "complete"},
        {"n": 6},
        {"cancel_requested": True},
        {"updated_at": "2026-06-08T00:00:01.000Z"},
        {"halt_class": "captcha"},
        {"epoch": "lz0abcdezzz"},
        {"steps": 4},
        {"rows": 2},
    ],
)
def test_the_etag_changes_with_every_field_of_the_object(change: dict[str, Any]) -> None:
    assert etag(meta(**change)) != etag(meta())
    assert etag(meta()) == etag(meta())


def test_if_none_match_forms() -> None:
    tag = etag(meta())
    assert etag_matches(tag, tag)
    assert etag_matches(f'"other", {tag}', tag)
    assert etag_matches(f"W/{tag}", tag)
    assert etag_matches("*", tag)
    assert not etag_matches('"other"', tag)
    assert not etag_matches("", tag)
    assert not etag_matches(None, tag)


# -- over HTTP -----------------------------------------------------------------------------


async def poll(svc: Any, run_id: str, **headers: str) -> tuple[int, Any, Any]:
    resp = await svc.client.get(f"/v1/runs/{run_id}", headers=svc.headers(**headers))
    body = await resp.json() if resp.status == 200 else await resp.read()
    return resp.status, body, resp.headers


async def test_the_hint_grows_while_quiet_and_resets_after_a_change(
    make_service, bridge: Bridge, clock: Clock
) -> None:
    svc = await make_service()
    run = bridge.open_run("p1", tenant="acme")
    run.set_phase("running")
    _, body, _ = await poll(svc, "p1")
    changed = parse_ts_us(body["updated_at"])

    seen = []
    for quiet_s in (0, 8, 20, 60, 600):
        clock.now = changed + quiet_s * S
        status, body, headers = await poll(svc, "p1")
        assert status == 200
        seen.append((body["poll_after_ms"], headers["Retry-After"], headers["ETag"]))
    assert [(ms, ra) for ms, ra, _ in seen] == [
        (1000, "1"),
        (2000, "2"),
        (5000, "5"),
        (15000, "15"),
        (30000, "30"),
    ]
    # The hint is not part of the tag: nothing else changed.
    assert len({tag for _, _, tag in seen}) == 1
    quiet_tag = seen[-1][2]

    # An unchanged run answers 304, no body, hint headers still there.
    status, raw, headers = await poll(svc, "p1", **{"If-None-Match": quiet_tag})
    assert status == 304 and raw == b""
    assert headers["ETag"] == quiet_tag and headers["Retry-After"] == "30"

    # A row resets the hint and changes the tag; the old tag no longer matches.
    run.append({"kind": "step", "type": "click"})
    clock.now = None
    status, body, headers = await poll(svc, "p1", **{"If-None-Match": quiet_tag})
    assert status == 200
    assert body["poll_after_ms"] == 1000 and headers["Retry-After"] == "1"
    assert headers["ETag"] != quiet_tag and body["steps"] == 1


async def test_a_terminal_run_has_no_hint_and_a_stable_tag(make_service, bridge: Bridge) -> None:
    svc = await make_service()
    run = bridge.open_run("p2", tenant="acme")
    run.set_phase("running")
    _, _, running_headers = await poll(svc, "p2")
    run.finish("halted", halt_class="captcha")
    status, body, headers = await poll(svc, "p2")
    assert status == 200 and body["phase"] == "halted" and body["halt_class"] == "captcha"
    assert body["poll_after_ms"] is None and "Retry-After" not in headers
    assert headers["ETag"] != running_headers["ETag"]
    status, raw, again = await poll(svc, "p2", **{"If-None-Match": headers["ETag"]})
    assert status == 304 and raw == b"" and "Retry-After" not in again


async def test_every_change_of_the_object_changes_the_tag(make_service, bridge: Bridge) -> None:
    svc = await make_service()
    await svc.client.post(
        "/v1/predict", json={"task_suite": {}, "run_id": "p3"}, headers=svc.headers()
    )
    tags = []

    async def tag() -> str:
        _, _, headers = await poll(svc, "p3")
        tags.append(headers["ETag"])
        return str(headers["ETag"])

    await tag()
    run = bridge.run("p3")
    run.set_phase("running")
    await tag()
    run.append({"kind": "extract", "row": {}})
    await tag()
    await svc.client.post("/v1/runs/p3/cancel", headers=svc.headers())
    await tag()
    run.finish("cancelled")
    await tag()
    assert len(set(tags)) == len(tags) == 5


def command_counts(rdb: Any) -> dict[str, int]:
    stats = rdb.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


async def test_a_poll_is_one_redis_command_whatever_the_runs_size(
    make_service, redis_url: str, rdb: Any
) -> None:
    svc = await make_service()
    with Bridge.from_url(redis_url, limits=LogLimits()) as bridge:
        small = bridge.open_run("small", tenant="acme")
        big = bridge.open_run("big", tenant="acme")
        big.set_phase("running")
        for i in range(3000):
            big.append({"kind": "step", "type": "click", "step_index": i})
        small.set_phase("running")
    _, big_body, big_headers = await poll(svc, "big")  # also warms the pool's connection up
    assert big_body["events"] == 3002

    polls = 40
    rdb.config_resetstat()
    for i in range(polls):
        run_id = "big" if i % 2 else "small"
        status, _, _ = await poll(svc, run_id)
        assert status == 200
    for _ in range(polls):
        status, _, _ = await poll(svc, "big", **{"If-None-Match": big_headers["ETag"]})
        assert status == 304
    counts = command_counts(rdb)
    counts.pop("config|resetstat", None)
    counts.pop("config", None)
    counts.pop("info", None)
    counts.pop("ping", None)  # the pool's health check, if it fell due
    assert counts == {"hmget": 2 * polls}, counts


async def test_concurrent_polls_share_pipelines_but_stay_one_command_each(
    make_service, bridge: Bridge, rdb: Any
) -> None:
    svc = await make_service()
    for i in range(10):
        bridge.open_run(f"c{i}", tenant="acme")
    await poll(svc, "c0")
    rdb.config_resetstat()
    answers = await asyncio.gather(*(poll(svc, f"c{i % 10}") for i in range(60)))
    assert [body["run_id"] for _, body, _ in answers] == [f"c{i % 10}" for i in range(60)]
    counts = command_counts(rdb)
    assert counts.get("hmget") == 60, counts


async def test_meta_reads_answer_each_caller_even_when_one_read_fails(
    redis_url: str, rdb: Any
) -> None:
    rdb.hset(meta_key("good"), mapping={"tenant": "acme", "epoch": "e", "phase": "running"})
    rdb.set(meta_key("wrong"), "not a hash")
    store = StoreClient(redis_url, 2)
    reads = meta_reads(store)
    good, wrong, missing = await asyncio.gather(
        reads.call("good"), reads.call("wrong"), reads.call("missing"), return_exceptions=True
    )
    assert isinstance(good, list) and good[0] == b"acme"
    assert isinstance(wrong, ResponseError) and "WRONGTYPE" in str(wrong)
    assert missing == [None] * len(good)
    await reads.aclose()
    await store.aclose()


async def test_meta_reads_fail_every_caller_when_the_store_is_down() -> None:
    store = StoreClient(f"redis://127.0.0.1:{free_port()}/0", 2)
    reads = meta_reads(store)
    answers = await asyncio.gather(*(reads.call(f"r{i}") for i in range(5)), return_exceptions=True)
    assert all(isinstance(a, ConnectionError | RedisConnectionError) for a in answers), answers
    await reads.aclose()
    await store.aclose()


async def test_poll_and_cancel_on_a_redis_cluster_submit_refused_clearly(aiohttp_client) -> None:
    from service.app import create_app
    from service.auth import TokenTable
    from service.settings import Settings

    from .conftest import TOKEN_SPEC, TOKENS
    from .redis_server import running_cluster

    with running_cluster() as url:
        settings = Settings(tenant_tokens=TOKEN_SPEC, redis_url=url)
        client = await aiohttp_client(
            create_app(settings, TokenTable.parse(TOKEN_SPEC), url),
            server_kwargs={"host": "127.0.0.1"},
        )
        headers = {"X-Mantis-Token": TOKENS["acme"]}
        with Bridge.from_url(url) as bridge:
            for i in range(6):  # run ids spread over the cluster's slots
                bridge.open_run(f"cl{i}", tenant="acme")
            polls = await asyncio.gather(
                *(client.get(f"/v1/runs/cl{i}", headers=headers) for i in range(6))
            )
            assert [(await r.json())["run_id"] for r in polls] == [f"cl{i}" for i in range(6)]
            resp = await client.post("/v1/runs/cl3/cancel", headers=headers)
            assert resp.status == 200 and (await resp.json())["phase"] == "cancelled"
            resp = await client.post("/v1/predict", json={"task_suite": {}}, headers=headers)
            assert resp.status == 501
            assert (await resp.json())["error"]["code"] == "not_supported"
