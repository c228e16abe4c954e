"""The work queue through the library (CONTRACT section 7): ``Bridge.jobs`` and
``AsyncBridge.jobs``, the claim scripts and fencing, against a real redis-server (and the
embedded store where ``store_url`` says so)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

import pytest
import redis

from runlog.calls import LogLimits, claim_call, claim_result, takeover_call
from runlog.errors import ClaimLost, InvalidWorker
from runlog.keys import meta_key, queue_key
from runner_bridge import AsyncBridge, Bridge
from runner_bridge.consumer import ConsumerCore, Entry, QueueSettings, check_worker

from .queue_support import (
    cancel,
    is_phase,
    phases,
    queue_state,
    read_log,
    read_meta,
    rows,
    submit,
    submit_plan,
    wait_for,
)

FAST = QueueSettings(claim_timeout_s=1.0)


def take_one(bridge: Bridge, worker: str = "w1") -> Any:
    """The first job of a fresh iterator, and the iterator (to close)."""
    jobs = bridge.jobs(worker, settings=FAST)
    return next(jobs), jobs


def test_jobs_take_runs_in_order_with_their_request(store_url: str) -> None:
    submit_plan(store_url, "r1", [{"type": "click", "target": "#a"}])
    submit(store_url, "r2", {"task_suite": {"goal": "two"}, "metadata": {"k": 1}})
    stop = threading.Event()
    seen = []
    with Bridge.from_url(store_url) as bridge:
        for job in bridge.jobs(worker="w1", stop=stop, settings=FAST):
            assert (job.worker, job.run.phase_at_open, job.held) == ("w1", "running", True)
            assert read_meta(store_url, job.run_id)["phase"] == "running"
            seen.append((job.run_id, job.request))
            job.run.append({"kind": "step", "step_index": 1, "type": "click"}, seq=1)
            job.run.finish("complete")
            assert not job.held
            if len(seen) == 2:
                stop.set()
    assert seen == [
        ("r1", {"task_suite": {"name": "r1", "_micro_plan": [{"type": "click", "target": "#a"}]}}),
        ("r2", {"task_suite": {"goal": "two"}, "metadata": {"k": 1}}),
    ]
    for run_id in ("r1", "r2"):
        assert phases(store_url, run_id) == ["queued", "running", "complete"]
        meta = read_meta(store_url, run_id)
        assert (meta["fence"], meta["worker"]) == ("1", "w1")
    assert queue_state(store_url) == (0, 0)  # acknowledged and deleted when finished


def test_a_run_submitted_before_any_worker_is_not_missed(redis_url: str) -> None:
    # The group is created by the first worker, from id 0: earlier entries count.
    submit_plan(redis_url, "early", [])
    client = redis.Redis.from_url(redis_url)
    assert client.xinfo_groups(queue_key()) == []  # submit does not create the group
    client.close()
    with Bridge.from_url(redis_url) as bridge:
        job, jobs = take_one(bridge)
        assert job.run_id == "early"
        job.run.finish("complete")
        jobs.close()


def test_second_worker_creating_the_group_is_fine(redis_url: str) -> None:
    with Bridge.from_url(redis_url) as bridge:
        stop = threading.Event()
        stop.set()
        for worker in ("w1", "w2"):  # BUSYGROUP for the second is not an error
            assert list(bridge.jobs(worker, stop=stop, settings=FAST)) == []


def test_runs_not_queued_any_more_are_skipped_and_dropped(redis_url: str) -> None:
    submit_plan(redis_url, "cancelled", [])
    submit_plan(redis_url, "gone", [])
    client = redis.Redis.from_url(redis_url)
    client.xadd(queue_key(), {"junk": "1"})  # no run_id: malformed
    client.delete(meta_key("gone"))  # expired, say
    client.close()
    submit_plan(redis_url, "ok", [])
    assert cancel(redis_url, "cancelled") == "cancelled"
    with Bridge.from_url(redis_url) as bridge:
        job, jobs = take_one(bridge)
        assert job.run_id == "ok"
        job.run.finish("complete")
        jobs.close()
    assert phases(redis_url, "cancelled") == ["queued", "cancelled"]
    assert queue_state(redis_url) == (0, 0)


def test_cancel_requested_is_seen_live_by_a_running_job(redis_url: str) -> None:
    submit_plan(redis_url, "r1", [])
    with Bridge.from_url(redis_url) as bridge:
        job, jobs = take_one(bridge)
        assert job.cancel_requested is False
        assert cancel(redis_url, "r1") == "requested"
        wait_for(lambda: job.cancel_requested, "the keep-alive to bring the cancel request")
        job.run.finish("cancelled")
        jobs.close()
    assert phases(redis_url, "r1") == ["queued", "running", "cancelled"]


def test_keepalive_keeps_a_slow_job_from_being_taken_over(redis_url: str) -> None:
    submit_plan(redis_url, "r1", [])
    with Bridge.from_url(redis_url) as bridge:
        job, jobs = take_one(bridge, "w1")
        stop_other = threading.Event()
        got: list[Any] = []

        def second() -> None:
            for j in bridge.jobs("w2", stop=stop_other, settings=FAST):
                got.append(j)
                stop_other.set()

        thread = threading.Thread(target=second)
        thread.start()
        # Three claim timeouts with w2 scanning for idle entries: w1's keep-alive holds.
        lease = int(read_meta(redis_url, "r1")["lease_until"])
        wait_for(
            lambda: int(read_meta(redis_url, "r1")["lease_until"]) > lease + 3000,
            "three timeouts of keep-alives",
        )
        stop_other.set()
        thread.join(timeout=10)
        assert got == []
        job.run.append({"kind": "step", "step_index": 1}, seq=1)
        job.run.finish("complete")
        jobs.close()
    assert phases(redis_url, "r1") == ["queued", "running", "complete"]
    assert read_meta(redis_url, "r1")["fence"] == "1"


def test_moving_on_without_finishing_hands_the_run_back(store_url: str) -> None:
    submit_plan(store_url, "r1", [])
    with Bridge.from_url(store_url) as bridge:
        job, jobs = take_one(bridge, "w1")
        job.run.append({"kind": "step", "step_index": 1}, seq=1)
        jobs.close()  # the holder stops with the run unfinished
        assert is_phase(store_url, "r1", "recovering")
        assert "worker" not in read_meta(store_url, "r1")
        with pytest.raises(ClaimLost):  # nothing the first holder still has in flight lands
            job.run.append({"kind": "step", "step_index": 2}, seq=2)
        again, jobs2 = take_one(bridge, "w2")  # queued again: taken at once, no timeout
        assert (again.run_id, again.resumed) == ("r1", True)
        assert again.run.published(1) and not again.run.published(2)
        again.run.append({"kind": "step", "step_index": 1}, seq=1)  # a replay: no-op
        again.run.append({"kind": "step", "step_index": 2}, seq=2)
        again.run.finish("complete")
        jobs2.close()
    assert phases(store_url, "r1") == ["queued", "running", "recovering", "running", "complete"]
    assert [r["step_index"] for r in rows(store_url, "r1")] == [1, 2]
    assert queue_state(store_url) == (0, 0)


def test_explicit_release_and_the_loop_moving_on(redis_url: str) -> None:
    submit_plan(redis_url, "r1", [])
    stop = threading.Event()
    with Bridge.from_url(redis_url) as bridge:
        taken = []
        for job in bridge.jobs("w1", stop=stop, settings=FAST):
            taken.append(job.run_id)
            if len(taken) == 1:
                job.release()  # handed back, queued again: this loop takes it again
                continue
            job.run.finish("complete")
            stop.set()
    assert taken == ["r1", "r1"]
    assert phases(redis_url, "r1") == ["queued", "running", "recovering", "running", "complete"]


# --- the claim scripts and fencing -------------------------------------------------------


def run_script(client: Any, call: Any) -> Any:
    source, keys, args = call
    return client.register_script(source)(keys=keys, args=args)


def test_takeover_waits_for_the_lease_then_fences_the_old_holder(redis_url: str) -> None:
    submit_plan(redis_url, "r1", [])
    limits = LogLimits()
    with Bridge.from_url(redis_url) as bridge:
        first = claim_result(run_script(bridge.client, claim_call("r1", "w1", 400, limits)))
        assert (first.outcome, first.fence, first.resumed) == ("held", "1", False)
        # A second claim of a fresh entry for a held run is a duplicate entry: skipped.
        again = claim_result(run_script(bridge.client, claim_call("r1", "w9", 400, limits)))
        assert again.outcome == "skip"
        alive = claim_result(run_script(bridge.client, takeover_call("r1", "w2", 400, limits)))
        assert alive.outcome == "alive"  # w1's lease still runs
        old = bridge.run("r1")
        old.fence = first.fence
        old.append({"kind": "step", "step_index": 1}, seq=1)
        taken = wait_for(
            lambda: (
                c := claim_result(run_script(bridge.client, takeover_call("r1", "w2", 400, limits)))
            ).held and c,
            "w1's lease to run out",
        )
        assert (taken.fence, taken.resumed) == ("2", True)
        before = read_log(redis_url, "r1")
        with pytest.raises(ClaimLost, match="taken over by another worker"):
            old.append({"kind": "step", "step_index": 2}, seq=2)
        with pytest.raises(ClaimLost):
            old.append({"kind": "step", "step_index": 1}, seq=1)  # even a repeat
        with pytest.raises(ClaimLost):
            old.finish("complete")
        assert read_log(redis_url, "r1") == before  # the late writer changed nothing
        new = bridge.run("r1")
        new.fence = taken.fence
        new.append({"kind": "step", "step_index": 2}, seq=2)
        # Writes outside the queue (tail, replay, the phase CLI) are not fenced.
        bridge.run("r1").append({"kind": "note", "text": "unfenced"})
        new.finish("complete")
    assert phases(redis_url, "r1") == ["queued", "running", "recovering", "running", "complete"]
    meta = read_meta(redis_url, "r1")
    assert (meta["worker"], meta["fence"]) == ("w2", "2")


def test_takeover_of_a_queued_or_finished_run(redis_url: str) -> None:
    submit_plan(redis_url, "q", [])
    submit_plan(redis_url, "done", [])
    limits = LogLimits()
    with Bridge.from_url(redis_url) as bridge:
        # The claimer died between reading the entry and claiming it: a plain claim.
        queued = claim_result(run_script(bridge.client, takeover_call("q", "w2", 1000, limits)))
        assert (queued.outcome, queued.resumed) == ("held", False)
        assert phases(redis_url, "q") == ["queued", "running"]
        cancel(redis_url, "done")
        done = claim_result(run_script(bridge.client, takeover_call("done", "w2", 1000, limits)))
        assert (done.outcome, done.phase) == ("skip", "cancelled")
        gone = claim_result(run_script(bridge.client, takeover_call("nope", "w2", 1000, limits)))
        assert gone.outcome == "gone"


def test_settings_and_names_are_checked() -> None:
    with pytest.raises(InvalidWorker, match="worker name"):
        check_worker("has space")
    with pytest.raises(ValueError, match="claim_timeout_s"):
        QueueSettings(claim_timeout_s=0)


def test_claim_timeout_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MANTIS_CLAIM_TIMEOUT_S", "2.5")
    settings = QueueSettings.from_env()
    assert (settings.lease_ms, settings.block_ms) == (2500, 1250)
    assert settings.keepalive_s == pytest.approx(2.5 / 3)
    monkeypatch.setenv("MANTIS_CLAIM_TIMEOUT_S", "soon")
    with pytest.raises(ValueError, match="MANTIS_CLAIM_TIMEOUT_S must be a positive number"):
        QueueSettings.from_env()
    monkeypatch.delenv("MANTIS_CLAIM_TIMEOUT_S")
    default = QueueSettings.from_env()
    assert (default.lease_ms, default.block_ms, default.keepalive_s) == (30000, 5000, 1.0)


# --- AsyncBridge.jobs ---------------------------------------------------------------------


async def test_async_jobs_take_finish_and_see_cancel(redis_url: str) -> None:
    submit_plan(redis_url, "a1", [{"type": "click", "target": "#a"}])
    submit_plan(redis_url, "a2", [])
    stop = asyncio.Event()
    async with AsyncBridge.from_url(redis_url) as bridge:
        seen = []
        async for job in bridge.jobs(worker="aw", stop=stop, settings=FAST):
            seen.append(job.run_id)
            assert job.request["task_suite"]["name"] == job.run_id
            await job.run.append({"kind": "step", "step_index": 1}, seq=1)
            if job.run_id == "a2":
                assert cancel(redis_url, "a2") == "requested"
                for _ in range(200):  # the keep-alive task brings it within a beat
                    if job.cancel_requested:
                        break
                    await asyncio.sleep(0.05)
                assert job.cancel_requested
                await job.run.finish("cancelled")
                stop.set()
            else:
                await job.run.finish("complete")
    assert seen == ["a1", "a2"]
    assert phases(redis_url, "a2") == ["queued", "running", "cancelled"]
    assert queue_state(redis_url) == (0, 0)


async def test_async_jobs_closed_early_hand_the_run_back(redis_url: str) -> None:
    submit_plan(redis_url, "a1", [])
    async with AsyncBridge.from_url(redis_url) as bridge:
        async with contextlib.aclosing(bridge.jobs("aw1", settings=FAST)) as jobs:
            async for job in jobs:
                await job.run.append({"kind": "step", "step_index": 1}, seq=1)
                break
        assert is_phase(redis_url, "a1", "recovering")
        async with contextlib.aclosing(bridge.jobs("aw2", settings=FAST)) as jobs:
            async for job in jobs:
                assert job.resumed and await job.run.published(1)
                await job.run.append({"kind": "step", "step_index": 2}, seq=2)
                await job.run.finish("complete")
                break
    assert phases(redis_url, "a1") == ["queued", "running", "recovering", "running", "complete"]
    assert [r["step_index"] for r in rows(redis_url, "a1")] == [1, 2]
    assert queue_state(redis_url) == (0, 0)


async def test_async_job_of_a_stalled_holder_is_taken_over(store_url: str) -> None:
    """w1 holds a run but its keep-alive stops (a stalled process); w2 takes it over after
    the claim timeout and w1's next write is refused."""
    submit_plan(store_url, "a1", [])
    async with AsyncBridge.from_url(store_url) as bridge:
        jobs1 = bridge.jobs("w1", settings=FAST)
        job1 = await anext(jobs1)
        await job1.run.append({"kind": "step", "step_index": 1}, seq=1)
        await job1._consumer._stop_keepalive(job1._state)  # the stall
        jobs2 = bridge.jobs("w2", settings=FAST)
        job2 = await asyncio.wait_for(anext(jobs2), timeout=20)
        assert (job2.run_id, job2.resumed, job2.fence) == ("a1", True, "2")
        with pytest.raises(ClaimLost):
            await job1.run.append({"kind": "step", "step_index": 2}, seq=2)
        assert job1.lost
        await job2.run.append({"kind": "step", "step_index": 1}, seq=1)
        await job2.run.append({"kind": "step", "step_index": 2}, seq=2)
        await job2.run.finish("complete")
        await jobs1.aclose()  # a lost job is not handed back: the entry is w2's
        await jobs2.aclose()
    assert phases(store_url, "a1") == ["queued", "running", "recovering", "running", "complete"]
    assert [r["step_index"] for r in rows(store_url, "a1")] == [1, 2]
    assert queue_state(store_url) == (0, 0)


def test_sync_job_of_a_stalled_holder_is_lost_and_not_handed_back(redis_url: str) -> None:
    submit_plan(redis_url, "r1", [])
    with Bridge.from_url(redis_url) as bridge:
        job1, jobs1 = take_one(bridge, "w1")
        job1.run.append({"kind": "step", "step_index": 1}, seq=1)
        job1._consumer._stop_keepalive(job1._state)  # the stall: no more keep-alives
        job2, jobs2 = take_one(bridge, "w2")  # after the claim timeout
        assert (job2.run_id, job2.fence, job2.resumed) == ("r1", "2", True)
        with pytest.raises(ClaimLost):
            job1.run.finish("complete")
        assert job1.lost and not job1.held
        jobs1.close()  # a lost job is not w1's to hand back: nothing is written
        assert phases(redis_url, "r1") == ["queued", "running", "recovering", "running"]
        assert read_meta(redis_url, "r1")["worker"] == "w2"
        job2.run.finish("complete")
        jobs2.close()
    assert queue_state(redis_url) == (0, 0)


def test_a_cancel_asked_while_handed_back_reaches_the_next_holder(redis_url: str) -> None:
    submit_plan(redis_url, "r1", [])
    with Bridge.from_url(redis_url) as bridge:
        job, jobs = take_one(bridge, "w1")
        job.release()
        assert cancel(redis_url, "r1") == "requested"  # recovering: the next holder decides
        jobs.close()
        again, jobs2 = take_one(bridge, "w2")
        assert again.cancel_requested  # from the claim itself, before any keep-alive
        again.run.finish("cancelled")
        jobs2.close()
    assert phases(redis_url, "r1")[-1] == "cancelled"


def test_consumer_core_schedules_scans_without_io() -> None:
    now = [100.0]
    core = ConsumerCore("w1", QueueSettings(claim_timeout_s=4), LogLimits(), clock=lambda: now[0])
    assert core.scan_due()  # a new consumer looks for runs left by dead workers first
    assert core.autoclaim_args()["min_idle_time"] == 4000
    found = core.scanned([b"5-0", [(b"3-0", {b"run_id": b"r1"}), (b"4-0", {b"x": b"y"})], []])
    assert found == [Entry("3-0", "r1"), Entry("4-0", None)]  # malformed: no run to claim
    assert core.scan_due() and core.autoclaim_args()["start_id"] == "5-0"  # pass goes on
    assert core.scanned([b"0-0", [], []]) == []  # the pass is over
    assert not core.scan_due()
    now[0] += core.settings.scan_interval_s
    assert core.scan_due() and core.autoclaim_args()["start_id"] == "0-0"
    assert core.read(None) == [] and core.read([]) == []
    reply = [[b"q", [(b"7-0", {b"run_id": b"bad id!"})]]]
    assert core.read(reply) == [Entry("7-0", None)]
    assert core.read_args()["block"] == 2000
