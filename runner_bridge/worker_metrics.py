"""A worker process's own metrics, served on ``MANTIS_METRICS_PORT`` when it is set.

A worker has no HTTP API, so it serves Prometheus's text format on a port of its own
(``MANTIS_METRICS_HOST``, default 127.0.0.1: exposing it is a choice, as for every
listener). The names are the ones ``deploy/grafana-dashboard.json`` charts.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, start_http_server

REGISTRY = CollectorRegistry()

CLAIMS = Counter(
    "mantis_worker_claims_total",
    "Queued runs this worker claimed.",
    registry=REGISTRY,
)
TAKEOVERS = Counter(
    "mantis_worker_takeovers_total",
    "Runs this worker took over (or took back) from a worker that stopped renewing its claim.",
    registry=REGISTRY,
)
RUNS = Counter(
    "mantis_worker_runs_total",
    "Runs this worker let go of, by how: finished, handed_back, lost (taken over), failed.",
    ["outcome"],
    registry=REGISTRY,
)
OUTCOMES = ("finished", "handed_back", "lost", "failed")
_run_children = {outcome: RUNS.labels(outcome) for outcome in OUTCOMES}


def record_taken(resumed: bool) -> None:
    """A job was handed to this worker: a fresh claim, or a takeover of a resumed run."""
    (TAKEOVERS if resumed else CLAIMS).inc()


def record_outcome(outcome: str) -> None:
    """How a job ended for this worker (one of ``OUTCOMES``)."""
    _run_children[outcome].inc()


def serve_from_env() -> int | None:
    """Serve the metrics if MANTIS_METRICS_PORT is set; the port, else None.

    Raises ``ValueError`` naming the variable when it is not a port number.
    """
    raw = os.environ.get("MANTIS_METRICS_PORT", "")
    if not raw:
        return None
    try:
        port = int(raw)
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        raise ValueError(f"MANTIS_METRICS_PORT must be a port number, got {raw!r}")
    host = os.environ.get("MANTIS_METRICS_HOST") or "127.0.0.1"
    start_http_server(port, host, registry=REGISTRY)
    return port
