"""A real browser: headless Chromium's EventSource on a dashboard page of another origin.

The page's backend (a small aiohttp server of the test, the dashboard's origin) holds the
tenant token and hands the page a ticket; the page opens ``new EventSource(...?ticket=)``
on the service, records every event and posts them back. The service runs as a child
process on the real redis-server with a 1 s soft limit and a 1 s ticket TTL, so the
browser's own reconnects (with ``Last-Event-ID``, after the ticket's TTL) happen while
rows keep being appended. Chromium's DevTools protocol shows every request it made.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from runlog.calls import LogLimits
from runner_bridge import AsyncBridge

from .conftest import TOKENS
from .redis_server import free_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium is not installed")

RUN_ID = "browser-run"

PAGE = """<!doctype html>
<meta charset="utf-8"><title>mantis dashboard</title>
<script>
const report = (kind, extra) => fetch("/report", {
  method: "POST", headers: {"Content-Type": "application/json"},
  body: JSON.stringify({kind, ...extra}),
});
window.onerror = (message) => { report("page_error", {message: String(message)}); };
(async () => {
  const {url} = await (await fetch("/ticket")).json();
  const events = [];
  let opens = 0;
  const es = new EventSource(url);
  es.onopen = () => { opens += 1; report("open", {opens}); };
  const record = (e) => {
    events.push({name: e.type, id: e.lastEventId, data: e.data});
    if (e.type === "terminal") report("terminal", {events, opens});
  };
  for (const name of ["phase", "step", "terminal", "gap", "message"]) {
    es.addEventListener(name, record);
  }
  es.onerror = () => {
    if (es.readyState === EventSource.CLOSED) {
      report("closed", {events, opens, readyState: es.readyState});
    }
  };
})().catch((err) => report("page_error", {message: String(err)}));
</script>
"""


@dataclass
class Dashboard:
    """The dashboard's origin: serves the page, mints tickets, receives the page's reports."""

    service: str
    origin: str = ""
    tickets: list[str] = field(default_factory=list)
    minted_at: float = 0.0
    reconnected_at: float = 0.0
    reports: list[dict[str, Any]] = field(default_factory=list)
    reconnected: asyncio.Event = field(default_factory=asyncio.Event)
    terminal: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def last(self, kind: str) -> dict[str, Any]:
        return next(r for r in reversed(self.reports) if r["kind"] == kind)

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    async def ticket(self, request: web.Request) -> web.Response:
        # The backend holds the tenant token; the browser only ever sees the ticket.
        async with aiohttp.ClientSession() as http, http.post(
            f"{self.service}/v1/runs/{RUN_ID}/tickets",
            headers={"X-Mantis-Token": TOKENS["acme"]},
        ) as resp:
            assert resp.status == 201
            ticket = (await resp.json())["ticket"]
        self.tickets.append(ticket)
        self.minted_at = asyncio.get_running_loop().time()
        url = f"{self.service}/v1/runs/{RUN_ID}/events?ticket={ticket}"
        return web.json_response({"url": url})

    async def report(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.reports.append(body)
        kind = body["kind"]
        if kind == "open" and body["opens"] == 2:
            self.reconnected_at = asyncio.get_running_loop().time()
            self.reconnected.set()
        elif kind == "terminal":
            self.terminal.set()
        elif kind in ("closed", "page_error"):
            self.closed.set()
        return web.Response(status=204)


@contextlib.asynccontextmanager
async def serve_dashboard(dash: Dashboard) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/", dash.page)
    app.router.add_get("/ticket", dash.ticket)
    app.router.add_post("/report", dash.report)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    dash.origin = f"http://127.0.0.1:{port}"
    try:
        yield dash.origin
    finally:
        await runner.cleanup()


class DevTools:
    """The few DevTools protocol calls the test needs, over the page target's websocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = iter(range(1, 1_000_000))
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.requests: dict[str, dict[str, Any]] = {}  # EventSource requests by requestId
        self.sent_headers: dict[str, dict[str, str]] = {}
        self.answered = asyncio.Event()
        # Other tests' hooks: called with (method, params) for every protocol event.
        self.listeners: list[Callable[[str, dict[str, Any]], None]] = []
        self.reader = asyncio.create_task(self._read())

    async def call(self, method: str, timeout_s: float = 10, **params: Any) -> Any:
        msg_id = next(self.ids)
        future = asyncio.get_running_loop().create_future()
        self.pending[msg_id] = future
        await self.ws.send_json({"id": msg_id, "method": method, "params": params})
        return await asyncio.wait_for(future, timeout_s)

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(msg.data)
            if "id" in data and data["id"] in self.pending:
                self.pending.pop(data["id"]).set_result(data.get("result"))
                continue
            params = data.get("params", {})
            method = data.get("method")
            for listener in self.listeners:
                listener(method, params)
            if method == "Network.requestWillBeSent" and params.get("type") == "EventSource":
                self.requests[params["requestId"]] = {"url": params["request"]["url"]}
            elif method == "Network.requestWillBeSentExtraInfo":
                headers = {k.lower(): v for k, v in params.get("headers", {}).items()}
                self.sent_headers[params["requestId"]] = headers
            elif method == "Network.responseReceived" and params.get("type") == "EventSource":
                entry = self.requests.setdefault(params["requestId"], {})
                entry["status"] = params["response"]["status"]
                self.answered.set()
            elif method == "Network.loadingFailed" and params["requestId"] in self.requests:
                self.requests[params["requestId"]].setdefault("status", params.get("errorText"))
                self.answered.set()

    async def all_answered(self) -> None:
        """Wait until DevTools has reported the outcome of every EventSource request."""
        while any("status" not in entry for entry in self.requests.values()):
            self.answered.clear()
            await self.answered.wait()

    def eventsource_requests(self) -> list[dict[str, Any]]:
        """Each EventSource request in order, with its status and Last-Event-ID header."""
        return [
            {**entry, "last_event_id": self.sent_headers.get(rid, {}).get("last-event-id")}
            for rid, entry in self.requests.items()
        ]


@contextlib.asynccontextmanager
async def chromium(tmp_path: Path) -> AsyncIterator[DevTools]:
    """Headless Chromium on about:blank with DevTools on a loopback port; killed at exit."""
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    log = (tmp_path / "chromium.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", "--disable-quic", f"--user-data-dir={profile}",
        "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", "about:blank",
        stdout=log, stderr=log, start_new_session=True,
    )
    log.close()
    try:
        active = profile / "DevToolsActivePort"
        async with asyncio.timeout(20):
            while not active.exists() or not active.read_text().strip():
                assert proc.returncode is None, "chromium exited"
                await asyncio.sleep(0.05)  # a child writing a file: no event to await
        port = int(active.read_text().split()[0])
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/json/list") as resp:
                targets = await resp.json()
            page = next(t for t in targets if t["type"] == "page")
            async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                tools = DevTools(ws)
                try:
                    yield tools
                finally:
                    tools.reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await tools.reader
    finally:
        # The whole process group: the browser and its renderer and utility children.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


async def test_browser_eventsource_with_a_ticket_across_reconnects(
    redis_url: str, spawn_service, tmp_path: Path
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        dash = Dashboard(service="")
        page_origin = await stack.enter_async_context(serve_dashboard(dash))
        svc = spawn_service(
            redis_url,
            MANTIS_STREAM_MAX_S="1",
            MANTIS_TICKET_TTL_S="1",
            MANTIS_CORS_ORIGINS=page_origin,
        )
        dash.service = svc.base
        bridge = await stack.enter_async_context(
            AsyncBridge.from_url(redis_url, limits=LogLimits())
        )
        run = await bridge.open_run(RUN_ID, tenant="acme")
        await run.set_phase("running")
        tools = await stack.enter_async_context(chromium(tmp_path))

        async with asyncio.timeout(40):
            await tools.call("Network.enable")
            await tools.call("Page.navigate", url=page_origin + "/")
            rows = 0
            # Rows keep coming through the first soft limit and the browser's reconnect,
            # which happens after the 1 s ticket TTL (so it rides on Last-Event-ID).
            while not dash.reconnected.is_set():
                assert not dash.closed.is_set(), dash.reports
                await run.append({"kind": "step", "step_index": rows, "note": "é \u2028 ok"})
                rows += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(dash.reconnected.wait(), 0.04)
            for _ in range(10):
                await run.append({"kind": "step", "step_index": rows})
                rows += 1
            await run.finish("complete")
            await dash.terminal.wait()
            await dash.closed.wait()
            # The page's report can overtake DevTools' own account of the last response.
            await tools.all_answered()

    errors = [r for r in dash.reports if r["kind"] == "page_error"]
    assert errors == []
    closed = dash.last("closed")
    assert closed["readyState"] == 2  # EventSource.CLOSED: it never reconnects again
    got = [
        {"event": e["name"], "id": e["id"], "data": json.loads(e["data"])}
        for e in closed["events"]
    ]
    async with aiohttp.ClientSession() as http, http.get(
        f"{svc.base}/v1/runs/{RUN_ID}/events?limit=10000",
        headers={"X-Mantis-Token": TOKENS["acme"]},
    ) as resp:
        log = (await resp.json())["events"]
    assert got == log  # every event exactly once, in order, with the service's ids
    assert [e["data"]["step_index"] for e in got if e["event"] == "step"] == list(range(rows))
    assert all(a["id"] < b["id"] for a, b in itertools.pairwise(got))
    assert got[-1]["event"] == "terminal"
    assert dash.last("terminal")["events"] == closed["events"]

    # What the browser did on the wire: streams (200) until the terminal, then one
    # reconnect answered 204, after which EventSource is CLOSED.
    requests = tools.eventsource_requests()
    statuses = [r.get("status") for r in requests]
    assert closed["opens"] >= 2
    # The reconnects came after the ticket's 1 s TTL: accepted because they resume.
    assert dash.reconnected_at - dash.minted_at > 1.0
    assert statuses == [200] * closed["opens"] + [204], requests
    assert requests[0]["last_event_id"] is None
    ids = [e["id"] for e in got]
    for request in requests[1:]:
        assert request["last_event_id"] in ids, requests
    assert requests[-1]["last_event_id"] == log[-1]["id"]
    assert len(dash.tickets) == 1 and all(dash.tickets[0] in r["url"] for r in requests)

    # The ticket (in the URL) and the token appear in no log line.
    service_log = svc.log.read_text()
    assert dash.tickets[0] not in service_log
    assert TOKENS["acme"] not in service_log
