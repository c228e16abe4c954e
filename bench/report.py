"""The targets table: medians over repetitions against the issue's targets and references."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .stats import spread

PASS, MISS, INFO, NOT_MEASURED, FAILED = "PASS", "MISS", "info", "NOT MEASURED", "FAILED"
# Share of the server core used by other processes above which a figure is flagged.
NOISY_NOTE_PCT = 10.0
POOL_BOUND = 16 + 1  # MANTIS_REDIS_MAX_CONNECTIONS default, plus the pub/sub connection


@dataclass
class Row:
    metric: str
    target: str
    reference: str
    measured: str
    ratio: str
    status: str
    note: str = ""


def _num(value: float | None, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}{unit}"
    return f"{value:.{digits}f}{unit}"


class Figures:
    """Lookup of one scenario's per-repetition figures."""

    def __init__(self, scenario: dict[str, Any] | None) -> None:
        self.scenario = scenario or {}
        self.reps: list[dict[str, Any]] = self.scenario.get("reps", [])

    @property
    def present(self) -> bool:
        return bool(self.reps)

    def values(self, key: str) -> list[float | None]:
        out: list[float | None] = []
        for rep in self.reps:
            value = rep.get(key)
            out.append(float(value) if isinstance(value, int | float) else None)
        return out

    def median(self, key: str) -> float | None:
        value = self.scenario.get("median", {}).get(key)
        return float(value) if isinstance(value, int | float) else None

    def text(self, key: str, unit: str = "", digits: int = 1) -> str:
        """Median, and the range when there are several repetitions."""
        med = self.median(key)
        if med is None:
            return "-"
        lo, hi = spread(self.values(key))
        if len(self.reps) > 1 and lo is not None and hi is not None and lo != hi:
            return f"{_num(med, unit, digits)} ({_num(lo, '', digits)}-{_num(hi, '', digits)})"
        return _num(med, unit, digits)

    def any_true(self, key: str) -> bool:
        return any(bool(rep.get(key)) for rep in self.reps)


def _at_most(value: float | None, limit: float) -> tuple[str, str]:
    if value is None:
        return "-", NOT_MEASURED
    return f"{value / limit:.2f}", PASS if value <= limit else MISS


def _at_least(value: float | None, floor: float) -> tuple[str, str]:
    if value is None:
        return "-", NOT_MEASURED
    return f"{value / floor:.2f}", PASS if value >= floor else MISS


def build_rows(scenarios: dict[str, dict[str, Any]]) -> list[Row]:
    """One row per target of the issue (plus a few figures that explain them)."""
    rows: list[Row] = []

    def get(name: str) -> Figures:
        return Figures(scenarios.get(name))

    fan, fan_a = get("fanout"), get("fanout_asyncio")
    idle, idle_a = get("idle"), get("idle_asyncio")
    hot, storm, pod, bridge, tail = (
        get("hot_run"), get("replay_storm"), get("redis_per_pod"), get("bridge"), get("tail")
    )

    def client_note(f: Figures, key: str = "client_bound") -> str:
        return "load generator >=90% of its core: figure is client-bound" if f.any_true(key) else ""

    def noise_note(f: Figures, key: str = "foreign_core0_pct") -> str:
        share = f.median(key)
        if share is None or share < NOISY_NOTE_PCT:
            return ""
        return f"other processes took {share:.0f}% of the server core meanwhile (pessimistic)"

    if fan.present:
        ratio, status = _at_most(fan.median("cpu_us_per_event"), 25.0)
        rows.append(Row(
            "CPU per delivered event at ~10k/s (service+Redis), uvloop", "<= 25 us",
            "Nchan+Redis 44-59 us; Nchan mem 20-25 us",
            fan.text("cpu_us_per_event", " us", 2), ratio, status,
            f"service {fan.text('service_us_per_event', '', 2)} + Redis "
            f"{fan.text('redis_us_per_event', '', 2)} us; "
            f"{_num(fan.median('service_writes_per_event'), '', 2)} write syscalls/delivery",
        ))
        ratio, status = _at_most(fan.median("p99_ms"), 50.0)
        rows.append(Row(
            "p99 publish-to-receive at ~10k/s, uvloop", "<= 50 ms", "Nchan 3-8 ms / <4 ms",
            fan.text("p99_ms", " ms", 2), ratio, status,
            f"p50 {fan.text('p50_ms', ' ms', 2)}; load generator "
            f"{_num(fan.median('loadgen_cpu_pct'), '%', 0)} of its core. {noise_note(fan)}",
        ))
        ratio, status = _at_least(fan.median("max_per_s_p99_50"), 30_000)
        note = []
        if fan.any_true("ladder_top_passed"):
            note.append("the ladder's top step passed: the real maximum is higher")
        if fan.any_true("limit_client_bound"):
            note.append("the failing step was client-bound (load generator >=90%)")
        if fan.any_true("limit_publisher_bound"):
            note.append("the failing step was publisher-bound")
        if noise_note(fan, "limit_foreign_core0_pct"):
            note.append("at the failing step " + noise_note(fan, "limit_foreign_core0_pct"))
        rows.append(Row(
            "Max deliveries/s, p99 <= 50 ms, no gap/dup (100x10), uvloop", ">= 30,000",
            "Nchan+Redis 20,000-22,500 (p99<250ms); mem >30,000",
            fan.text("max_per_s_p99_50", "/s", 0), ratio, status, "; ".join(note),
        ))
        rows.append(Row(
            "Max deliveries/s, p99 < 250 ms (reference criterion), uvloop", "-",
            "Nchan+Redis 20,000-22,500", fan.text("max_per_s_p99_250", "/s", 0), "-", INFO, "",
        ))
    if fan_a.present:
        rows.append(Row(
            "CPU per delivered event at ~10k/s, default asyncio loop", "runs (info)",
            "-", fan_a.text("cpu_us_per_event", " us", 2), "-", INFO,
            f"p99 {fan_a.text('p99_ms', ' ms', 2)}; max at p99<=50ms "
            f"{fan_a.text('max_per_s_p99_50', '/s', 0)}",
        ))
    if idle.present:
        ratio, status = _at_most(idle.median("rss_kib_per_conn"), 10.0)
        rows.append(Row(
            f"RSS per idle SSE connection at {_num(idle.median('conns'), '', 0)} conns, uvloop",
            "<= 10 KB", "Nchan 10.4 / 10.2 KB; bare aiohttp-sse 12.8-13.6 KB",
            idle.text("rss_kib_per_conn", " KiB", 2), ratio, status,
            f"idle service CPU {idle.text('idle_service_cpu_pct', '%', 2)} with every stream "
            f"open; a bare asyncio.Protocol client conn (load generator): "
            f"{idle.text('loadgen_rss_kib_per_conn', ' KiB', 2)}",
        ))
    if idle_a.present:
        rows.append(Row(
            "RSS per idle SSE connection, default asyncio loop", "(info)", "-",
            idle_a.text("rss_kib_per_conn", " KiB", 2), "-", INFO, "",
        ))
    if hot.present:
        ratio, status = _at_most(hot.median("p99_ms"), 50.0)
        rows.append(Row(
            f"Hot run 1x{_num(hot.median('clients'), '', 0)} at 20 rows/s: p99", "<= 50 ms", "-",
            hot.text("p99_ms", " ms", 1), ratio, status,
            f"p50 {hot.text('p50_ms', ' ms', 1)}; "
            f"{hot.text('delivered_per_s', '/s', 0)} delivered; "
            f"{hot.text('cpu_us_per_event', ' us', 2)}/event. {client_note(hot)} "
            f"{noise_note(hot)}",
        ))
    if storm.present:
        ratio, status = _at_least(storm.median("events_per_s"), 150_000)
        rows.append(Row(
            f"Replay storm: {_num(storm.median('clients'), '', 0)} clients resume at once",
            ">= 150,000 ev/s", "-", storm.text("events_per_s", "/s", 0), ratio, status,
            f"service {storm.text('service_cpu_pct', '%', 0)} CPU, "
            f"{storm.text('service_us_per_event', ' us', 2)}/event; "
            f"{storm.text('unavailable_503', '', 0)} answers were 503 (clients retried). "
            f"{client_note(storm)} {noise_note(storm)}",
        ))
    if pod.present:
        med = pod.scenario.get("median", {})
        levels = sorted(int(k.rsplit("w", 1)[1]) for k in med if k.startswith("service_conns_w"))
        cmds = [med.get(f"service_cmds_per_event_w{w}") for w in levels]
        conns = [med.get(f"service_conns_w{w}") for w in levels]
        label = "/".join(str(w) for w in levels)
        constant = all(c is not None and abs(c - cmds[0]) < 0.01 for c in cmds)
        rows.append(Row(
            f"Redis commands per appended event per pod ({label} watchers)", "constant", "-",
            ", ".join(_num(c, "", 2) for c in cmds), "-", PASS if constant else MISS,
            f"publisher (bridge) itself: {_num(pod.median('publisher_per_event'), '', 2)}"
            " per event",
        ))
        bounded = all(c is not None and c <= POOL_BOUND for c in conns)
        equal = len({c for c in conns}) == 1
        rows.append(Row(
            f"Redis connections per pod ({label} watchers)", "constant", "-",
            ", ".join(_num(c, "", 0) for c in conns), "-", PASS if bounded else MISS,
            "" if equal else f"grows with demand up to the pool bound ({POOL_BOUND - 1} + pub/sub)",
        ))
    if bridge.present:
        ratio, status = _at_least(bridge.median("pipelined_appends_per_s"), 20_000)
        rows.append(Row(
            "AsyncBridge appends/s from one process (pipelined)", ">= 20,000", "-",
            bridge.text("pipelined_appends_per_s", "/s", 0), ratio, status,
            f"one by one: {bridge.text('sequential_appends_per_s', '/s', 0)}; "
            f"{bridge.text('publisher_us_per_append', ' us', 1)} runner CPU + "
            f"{bridge.text('redis_us_per_append', ' us', 1)} Redis CPU per append",
        ))
    if tail.present and tail.any_true("measured"):
        ratio, status = _at_least(tail.median("lines_per_s"), 10_000)
        rows.append(Row(
            "runner_bridge tail lines/s", ">= 10,000", "-", tail.text("lines_per_s", "/s", 0),
            ratio, status, f"including process start: {tail.text('lines_per_s_wall', '/s', 0)}",
        ))
    else:
        detail = (tail.scenario.get("detail") or [{}])[0] if tail.present else {}
        rows.append(Row(
            "runner_bridge tail lines/s", ">= 10,000", "-", "not measured", "-", NOT_MEASURED,
            str(detail.get("not_measured", "scenario not run")),
        ))
    runs = get("runs")
    if runs.present:
        ratio, status = _at_least(runs.median("submits_per_s"), 2_000)
        if status == PASS and (runs.median("submit_p99_ms") or 1e9) > 50.0:
            status = MISS
        rows.append(Row(
            "Runs API submits/s on one pod (p99 <= 50 ms)", ">= 2,000", "-",
            runs.text("submits_per_s", "/s", 0), ratio, status,
            f"p50 {runs.text('submit_p50_ms', ' ms', 2)}, p99 "
            f"{runs.text('submit_p99_ms', ' ms', 2)}; "
            f"{runs.text('redis_cmds_per_submit', '', 1)} Redis commands each. "
            f"{client_note(runs)} {noise_note(runs)}",
        ))
        ratio, status = _at_least(runs.median("polls_per_s"), 10_000)
        if status == PASS and (runs.median("poll_p99_ms") or 1e9) > 50.0:
            status = MISS
        rows.append(Row(
            "Runs API cheap polls/s on one pod (p99 <= 50 ms)", ">= 10,000", "-",
            runs.text("polls_per_s", "/s", 0), ratio, status,
            f"p50 {runs.text('poll_p50_ms', ' ms', 2)}, p99 {runs.text('poll_p99_ms', ' ms', 2)}; "
            f"{runs.text('redis_cmds_per_poll', '', 2)} Redis commands each; load generator "
            f"{_num(runs.median('poll_loadgen_cpu_pct'), '%', 0)} of its core",
        ))
    hooks = get("webhooks")
    if hooks.present:
        ratio, status = _at_least(hooks.median("deliveries_per_s"), 1_000)
        rows.append(Row(
            "Webhook deliveries/s per pod, paced (local receiver, 2 endpoints)", ">= 1,000",
            "-", hooks.text("deliveries_per_s", "/s", 0), ratio, status,
            f"offered {hooks.text('offered_per_s', '/s', 0)}; {hooks.text('duplicates', '', 0)}"
            f" duplicates; service {hooks.text('service_cpu_pct', '%', 0)} CPU. "
            f"{noise_note(hooks)}",
        ))
        ratio, status = _at_most(hooks.median("p99_ms"), 50.0)
        rows.append(Row(
            f"Stream p99 meanwhile (1x{_num(hooks.median('stream_clients'), '', 0)}"
            " at 20 rows/s)", "<= 50 ms", "-", hooks.text("p99_ms", " ms", 1), ratio, status,
            f"p50 {hooks.text('p50_ms', ' ms', 1)}. {client_note(hooks)}",
        ))
        rows.append(Row(
            "Webhook deliveries/s per pod, backlog (as fast as it can)", "(info)", "-",
            hooks.text("max_deliveries_per_s", "/s", 0), "-", INFO, "",
        ))
    if pod.present:
        ratio, status = _at_most(pod.median("append_cmds_per_event"), 4.0)
        rows.append(Row(
            "Redis commands per appended row, inside the append script", "<= 4", "11 before",
            pod.text("append_cmds_per_event", "", 2), ratio, status,
            f"+ {pod.text('append_evalsha_per_event', '', 2)} EVALSHA (the call that carries "
            f"it); {pod.text('publisher_per_event', '', 2)} in all per row, pipelined by 50",
        ))
    hot_big = get("hot_run_10k")
    if hot_big.present:
        ratio, status = _at_most(hot_big.median("p99_ms"), 100.0)
        rows.append(Row(
            "hot run 1 x 10,000 at 20 rows/s: p99", "<= 100 ms", "-",
            hot_big.text("p99_ms", " ms", 1), ratio, status,
            f"p50 {hot_big.text('p50_ms', ' ms', 1)}; {hot_big.text('cpu_us_per_event', ' us', 2)}"
            f"/event; {hot_big.text('appends_per_s', ' rows/s', 1)} published in the window; "
            f"{client_note(hot_big)} {noise_note(hot_big)}",
        ))
    rows += _nchan_rows(get)
    gaps = _rep_sum_all(scenarios, "gaps")
    dups = _rep_sum_all(scenarios, "dups")
    problems = [p for s in scenarios.values() for p in s.get("problems", [])]
    rows.append(Row(
        "Gaps / duplicates / unfinished clients, every scenario", "0", "-",
        f"{gaps} / {dups} / {len(problems)} problems", "-",
        PASS if not problems and gaps == 0 and dups == 0 else FAILED,
        "; ".join(problems[:3]),
    ))
    if fan_a.present or idle_a.present:
        bad = [p for name in ("fanout_asyncio", "idle_asyncio")
               for p in scenarios.get(name, {}).get("problems", [])]
        errors = [e for name in ("fanout_asyncio", "idle_asyncio")
                  for e in scenarios.get(name, {}).get("errors", [])]
        rows.append(Row(
            "Service on the default asyncio loop", "works", "-",
            "ok" if not bad and not errors else "problems", "-",
            PASS if not bad and not errors else FAILED, "; ".join((bad + errors)[:2]),
        ))
    return rows


# (metric, our scenario, Nchan's scenario suffix, figure key, unit, digits)
_VERSUS = (
    ("CPU per delivered event at 10k/s (server+Redis)", "fanout", "fanout", "cpu_us_per_event",
     " us", 2),
    ("p99 publish-to-receive at 10k/s", "fanout", "fanout", "p99_ms", " ms", 2),
    ("max deliveries/s, p99 <= 50 ms", "fanout", "fanout", "max_per_s_p99_50", "/s", 0),
    ("RSS per idle SSE connection", "idle", "idle", "rss_kib_per_conn", " KiB", 2),
    ("hot run 1 x 2,000 at 20 rows/s: p99", "hot_run", "hot_run", "p99_ms", " ms", 1),
    ("hot run 1 x 10,000 at 20 rows/s: p99", "hot_run_10k", "hot_run_10k", "p99_ms", " ms", 1),
)


def _nchan_rows(get: Any) -> list[Row]:
    """Our figures as ratios to nginx + Nchan's, measured in the same run (--only nchan)."""
    rows = []
    for metric, ours_key, suffix, key, unit, digits in _VERSUS:
        ours = get(ours_key)
        for store in ("mem", "redis"):
            ref = get(f"nchan_{store}_{suffix}")
            if not ref.present:
                continue
            a, b = ours.median(key), ref.median(key)
            ratio = f"{a / b:.2f}" if a is not None and b else "-"
            label = "in memory" if store == "mem" else "Redis store"
            rows.append(Row(
                f"vs Nchan ({label}): {metric}", "ratio", ref.text(key, unit, digits),
                ours.text(key, unit, digits), ratio, INFO,
            ))
    return rows


def _rep_sum(scenario: dict[str, Any], key: str) -> int:
    return sum(int(rep.get(key) or 0) for rep in scenario.get("reps", []))


def _rep_sum_all(scenarios: dict[str, dict[str, Any]], key: str) -> int:
    return sum(_rep_sum(s, key) for s in scenarios.values())


def format_table(rows: list[Row]) -> str:
    """A plain-text table that fits a wide terminal; notes go under their row."""
    head = ("metric", "target", "measured (median, range)", "ratio", "status", "reference")
    cols = [
        (r.metric, r.target, r.measured, r.ratio, r.status, r.reference) for r in rows
    ]
    widths = [min(64, max(len(head[i]), *(len(c[i]) for c in cols))) for i in range(len(head))]
    sep = "  "
    lines = [sep.join(h.ljust(widths[i]) for i, h in enumerate(head)).rstrip()]
    lines.append(sep.join("-" * w for w in widths))
    for row, col in zip(rows, cols, strict=True):
        lines.append(sep.join(str(v)[:64].ljust(widths[i]) for i, v in enumerate(col)).rstrip())
        if row.note:
            lines.append(f"    {row.note}")
    return "\n".join(lines)


def rows_json(rows: list[Row]) -> list[dict[str, str]]:
    return [asdict(r) for r in rows]
