"""Small statistics: percentiles of latency samples, medians over repetitions."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from typing import Any

LATENCY_POINTS = (50.0, 90.0, 99.0, 99.9)


def percentiles_ms(samples_ns: list[int]) -> dict[str, float | None]:
    """p50/p90/p99/p99.9/max of nanosecond samples, in milliseconds (nearest rank)."""
    if not samples_ns:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "p999_ms": None, "max_ms": None}
    ordered = sorted(samples_ns)
    last = len(ordered) - 1
    out: dict[str, float | None] = {}
    for point in LATENCY_POINTS:
        key = "p999_ms" if point == 99.9 else f"p{int(point)}_ms"
        out[key] = ordered[min(last, int(point / 100.0 * len(ordered)))] / 1e6
    out["max_ms"] = ordered[last] / 1e6
    return out


def median(values: Iterable[float | None]) -> float | None:
    """Median of the values that are present; None if none is."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def spread(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    present = [v for v in values if v is not None]
    return (min(present), max(present)) if present else (None, None)


def medians(reps: list[dict[str, Any]]) -> dict[str, Any]:
    """Per numeric key present in every repetition: the median; other keys from the first."""
    if not reps:
        return {}
    out: dict[str, Any] = {}
    for key, first in reps[0].items():
        values = [rep.get(key) for rep in reps]
        if isinstance(first, bool) or not isinstance(first, int | float):
            out[key] = first
            continue
        numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        out[key] = statistics.median(numbers) if numbers else None
    return out
