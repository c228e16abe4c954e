"""How big and how long each scenario is, for ``--smoke``, ``--quick`` and the full run."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Sizes:
    """Every size and duration the scenarios take."""

    mode: str
    reps: int
    # fan-out: runs x clients, a first window at the reference rate, then a rising ladder
    fan_runs: int = 100
    fan_clients: int = 10
    fan_steps: tuple[int, ...] = (10_000, 20_000, 30_000, 40_000, 50_000, 60_000, 80_000)
    fan_warmup_s: float = 2.0
    fan_window_s: float = 10.0
    step_warmup_s: float = 1.0
    step_window_s: float = 4.0
    # idle connections
    idle_conns: int = 10_000
    idle_runs: int = 100
    idle_settle_s: float = 3.0
    # hot run
    hot_clients: int = 2_000
    hot_big_clients: int = 10_000
    hot_rate: float = 20.0
    hot_warmup_s: float = 2.0
    hot_window_s: float = 10.0
    # replay storm
    storm_clients: int = 500
    storm_events: int = 10_000
    # Redis commands and connections per pod
    cmd_watchers: tuple[int, ...] = (1, 10, 100, 1_000)
    cmd_events: int = 500
    # runner side
    bridge_rows: int = 30_000
    bridge_batch: int = 100
    bridge_sequential: int = 3_000
    tail_lines: int = 20_000
    # runs API: closed-loop submits, then polls, on this many keep-alive connections
    runs_concurrency: int = 64
    runs_window_s: float = 5.0
    runs_poll_targets: int = 100
    # webhooks: runs finishing (8 deliveries each over 2 endpoints) while a stream runs:
    # paced (150 runs/s = 1,200 deliveries/s), then a backlog of hook_runs
    hook_paced_runs_per_s: float = 150.0
    hook_runs: int = 2_500
    hook_stream_clients: int = 200
    hook_window_s: float = 10.0
    # the default loop: how many repetitions of the fan-out and idle scenarios run on it
    asyncio_fan_reps: int = 1
    asyncio_idle_reps: int = 1
    timeout_scale: float = 1.0
    # the reference (nginx + Nchan) on the same workloads; not in the smoke run (tests)
    nchan: bool = True
    # times a failing ladder rung is tried again when other processes loaded the server core
    noisy_retries: int = 2
    # how long to wait, before each repetition, for other work of the machine to calm down,
    # and how much waiting the whole run may spend
    quiet_wait_s: float = 20.0
    quiet_budget_s: float = 150.0


FULL = Sizes(mode="full", reps=3)

QUICK = replace(
    FULL, mode="quick", reps=1, fan_window_s=5.0, step_window_s=3.0, fan_warmup_s=1.0,
    hot_window_s=5.0, hot_warmup_s=1.0, idle_settle_s=2.0, bridge_rows=20_000,
    bridge_sequential=1_000, runs_window_s=3.0, asyncio_fan_reps=1, asyncio_idle_reps=0,
    quiet_wait_s=10.0,
    quiet_budget_s=60.0,
)

SMOKE = Sizes(
    mode="smoke", reps=1,
    fan_runs=3, fan_clients=3, fan_steps=(300, 600), fan_warmup_s=0.3, fan_window_s=1.0,
    step_warmup_s=0.2, step_window_s=0.7,
    idle_conns=60, idle_runs=3, idle_settle_s=0.3,
    hot_clients=40, hot_big_clients=80, hot_rate=20.0, hot_warmup_s=0.3, hot_window_s=1.0,
    storm_clients=10, storm_events=300,
    cmd_watchers=(1, 10), cmd_events=50,
    bridge_rows=500, bridge_batch=100, bridge_sequential=100, tail_lines=200,
    runs_concurrency=4, runs_window_s=0.5, runs_poll_targets=5,
    hook_paced_runs_per_s=20.0, hook_runs=30, hook_stream_clients=10, hook_window_s=1.0,
    asyncio_fan_reps=1, asyncio_idle_reps=0, timeout_scale=0.5, noisy_retries=0, nchan=False,
    quiet_wait_s=0.0,
)

MODES = {"full": FULL, "quick": QUICK, "smoke": SMOKE}
