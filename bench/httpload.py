"""Closed-loop request load for the runs API: submits (``POST /v1/predict``) and polls
(``GET /v1/runs/{run_id}``) on keep-alive HTTP/1.1 connections.

Hand-rolled on asyncio streams (one request in flight per connection, a Content-Length
body read exactly) so the load generator costs little CPU next to the service it measures.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import orjson

from .stats import percentiles_ms

SUBMIT_BODY = orjson.dumps({"task_suite": {"_micro_plan": [{"type": "click", "target": "#a"}]}})


class _Tally:
    """Answers by status, latencies, and the run ids that submits named."""

    def __init__(self, keep_ids: int) -> None:
        self.statuses: dict[int, int] = {}
        self.latencies: list[int] = []
        self.errors: list[str] = []
        self.run_ids: list[str] = []
        self.keep_ids = keep_ids


def _request(method: str, path: str, token: str, body: bytes = b"") -> bytes:
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Mantis-Token: {token}\r\n"
        f"Content-Length: {len(body)}\r\n"
    )
    if body:
        head += "Content-Type: application/json\r\n"
    return head.encode() + b"\r\n" + body


async def _one(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, bytes]:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    body = await reader.readexactly(length) if length else b""
    return status, body


async def _connection(
    port: int, requests: list[bytes], end: float, tally: _Tally, submit: bool
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = 0
    try:
        while time.perf_counter() < end:
            request = requests[i % len(requests)]
            i += 1
            t0 = time.perf_counter_ns()
            status, body = await _one(reader, writer, request)
            tally.latencies.append(time.perf_counter_ns() - t0)
            tally.statuses[status] = tally.statuses.get(status, 0) + 1
            if submit and status == 202 and len(tally.run_ids) < tally.keep_ids:
                tally.run_ids.append(orjson.loads(body)["run_id"])
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        tally.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def load(
    port: int,
    token: str,
    *,
    kind: str,
    seconds: float,
    concurrency: int,
    run_ids: list[str] | None = None,
    keep_ids: int = 0,
) -> dict[str, Any]:
    """``kind`` "submit" or "poll" for ``seconds`` on ``concurrency`` connections."""
    if kind == "submit":
        requests = [_request("POST", "/v1/predict", token, SUBMIT_BODY)]
    elif kind == "poll" and run_ids:
        requests = [_request("GET", f"/v1/runs/{run_id}", token) for run_id in run_ids]
    else:
        raise ValueError(f"unknown load kind {kind!r} (poll needs run_ids)")
    tally = _Tally(keep_ids)
    started = time.perf_counter()
    end = started + seconds
    await asyncio.gather(
        *(
            _connection(port, requests[i % len(requests):] + requests, end, tally, kind == "submit")
            for i in range(concurrency)
        )
    )
    wall = time.perf_counter() - started
    done = len(tally.latencies)
    return {
        "requests": done,
        "wall_s": wall,
        "per_s": done / wall if wall > 0 else 0.0,
        "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
        "errors": tally.errors[:5],
        "run_ids": tally.run_ids,
        **percentiles_ms(tally.latencies),
    }
