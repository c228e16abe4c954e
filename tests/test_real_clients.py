"""Third-party clients against a live run: curl, and the sseclient-py parser over httpx."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
import sseclient

from runner_bridge import AsyncBridge

from .conftest import TOKENS

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


def parse_sse(text: str) -> list[dict[str, Any]]:
    """Events of an SSE body, as the JSON page lists them (comments and retry dropped)."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if line and not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value
        if "data" in fields:
            events.append(
                {"event": fields.get("event", "message"), "id": fields.get("id"),
                 "data": json.loads(fields["data"])}
            )
    return events


async def full_log(svc, run_id: str) -> list[dict[str, Any]]:
    resp = await svc.client.get(f"/v1/runs/{run_id}/events?limit=10000", headers=svc.headers())
    assert resp.status == 200
    body = await resp.json()
    assert body["done"]
    events: list[dict[str, Any]] = body["events"]
    return events


def header_file(tmp_path: Path, **headers: str) -> str:
    """curl's ``-H @file``: the token stays off the process list."""
    path = tmp_path / "curl-headers.txt"
    path.write_text("".join(f"{name.replace('_', '-')}: {v}\n" for name, v in headers.items()))
    return "@" + str(path)


async def test_curl_resumes_after_last_event_id_until_terminal(
    make_service, abridge: AsyncBridge, tmp_path: Path
) -> None:
    svc = await make_service()
    run = await abridge.open_run("c1", tenant="acme")
    await run.set_phase("running")
    ids = [await run.append({"kind": "step", "step_index": i}) for i in range(5)]
    cursor, last_replayed = ids[1], ids[4]
    url = f"{svc.base}/v1/runs/c1/events?sse=true"
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sN", "--max-time", "30",
        "-H", header_file(tmp_path, X_Mantis_Token=TOKENS["acme"], Last_Event_ID=cursor), url,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    out = b""
    try:
        async with asyncio.timeout(20):
            # The replay first; rows appended after it reach curl live.
            while f"id: {last_replayed}\n".encode() not in out:
                line = await proc.stdout.readline()
                assert line, f"curl ended early: {out!r}"
                out += line
            for i in range(5, 10):
                await run.append({"kind": "step", "step_index": i})
            await run.finish("complete")
            out += await proc.stdout.read()
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    text = out.decode()
    assert text.startswith("retry: 2000\n\n")
    got = parse_sse(text)
    log = await full_log(svc, "c1")
    after = [e for e in log if e["id"] > cursor]
    assert got == after
    assert [e["data"].get("step_index") for e in got if e["event"] == "step"] == list(range(2, 10))
    assert got[-1]["event"] == "terminal"

    done = await asyncio.create_subprocess_exec(
        "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
        "-H", header_file(tmp_path, X_Mantis_Token=TOKENS["acme"], Last_Event_ID=log[-1]["id"]),
        url, stdout=asyncio.subprocess.PIPE,
    )
    status, _ = await asyncio.wait_for(done.communicate(), 10)
    assert status == b"204"


def follow_with_sseclient(base: str, run_id: str, on_connect) -> tuple[list[Any], int]:
    """A reconnect loop a third party would write: sseclient-py parsing httpx's bytes."""
    received: list[Any] = []
    last_id = ""
    with httpx.Client(base_url=base, timeout=httpx.Timeout(10.0)) as http:
        for connection in range(1, 31):
            headers = {"X-Mantis-Token": TOKENS["acme"], "Accept": "text/event-stream"}
            if last_id:
                headers["Last-Event-ID"] = last_id
            with http.stream("GET", f"/v1/runs/{run_id}/events", headers=headers) as resp:
                assert resp.status_code == 200, resp.status_code
                on_connect()
                for event in sseclient.SSEClient(resp.iter_bytes()).events():
                    received.append(event)
                    last_id = event.id or last_id
                    if event.event == "terminal":
                        return received, connection
    raise AssertionError("no terminal event after 30 connections")


async def test_sseclient_across_soft_limit_reconnects_gets_each_event_once(
    make_service, abridge: AsyncBridge
) -> None:
    svc = await make_service(stream_max_s=1)
    run = await abridge.open_run("s1", tenant="acme")
    await run.set_phase("running")
    loop = asyncio.get_running_loop()
    connections = 0
    reconnected = asyncio.Event()

    def connected() -> None:
        nonlocal connections
        connections += 1
        if connections >= 2:
            reconnected.set()

    reader = asyncio.create_task(
        asyncio.to_thread(
            follow_with_sseclient, svc.base, "s1", lambda: loop.call_soon_threadsafe(connected)
        )
    )
    rows = 0
    async with asyncio.timeout(20):
        # Rows keep coming while the stream hits its soft limit and the client resumes.
        while not reconnected.is_set():
            await run.append({"kind": "step", "step_index": rows})
            rows += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reconnected.wait(), 0.03)
        for _ in range(5):
            await run.append({"kind": "step", "step_index": rows})
            rows += 1
        await run.finish("complete")
        received, used = await reader

    assert used >= 2
    got = [{"event": e.event, "id": e.id, "data": json.loads(e.data)} for e in received]
    assert got == await full_log(svc, "s1")
    assert [e["data"]["step_index"] for e in got if e["event"] == "step"] == list(range(rows))
    assert all(a["id"] < b["id"] for a, b in itertools.pairwise(got))
