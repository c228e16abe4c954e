"""The ops dashboard in a real headless Chromium, served by a real service process on a
real redis-server, fed by the runner bridge.

The page signs in from ``/dashboard#token=...``; its table is built from the tenant feed
and its timeline from a run's stream, both over tickets. DevTools shows every request the
browser made (none may carry the token) and lets the test click, type and take
screenshots, which are kept under ``test-artifacts/`` (git-ignored) to look at.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from runlog.calls import LogLimits, open_run_call
from runlog.scripts import OPEN_RUN
from runner_bridge import AsyncBridge, Bridge

from .conftest import ROOT, TOKENS
from .test_browser import CHROMIUM, DevTools, chromium

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium is not installed")

ARTIFACTS = ROOT / "test-artifacts"
TOKEN = TOKENS["acme"]


class Page:
    """The dashboard tab: DOM queries that wait for a condition, input, and what the
    browser sent over the network."""

    def __init__(self, tools: DevTools) -> None:
        self.tools = tools
        self.requests: list[dict[str, Any]] = []
        self.sent_headers: list[dict[str, str]] = []
        self.problems: list[str] = []
        self.loaded = asyncio.Event()
        tools.listeners.append(self._on_event)

    async def goto(self, url: str) -> None:
        """Navigate and wait for the new document's load event, so that no later query
        reads the document being left."""
        await self.tools.call("Page.enable")
        self.loaded.clear()
        await self.tools.call("Page.navigate", url=url)
        await asyncio.wait_for(self.loaded.wait(), 20)

    async def reload(self) -> None:
        """Reload and wait for the new document's load event (not the old one's DOM)."""
        await self.tools.call("Page.enable")
        self.loaded.clear()
        await self.tools.call("Page.reload")
        await asyncio.wait_for(self.loaded.wait(), 20)

    def _on_event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Page.loadEventFired":
            self.loaded.set()
        elif method == "Network.requestWillBeSent":
            self.requests.append(params["request"] | {"type": params.get("type")})
        elif method == "Network.requestWillBeSentExtraInfo":
            self.sent_headers.append({k.lower(): v for k, v in params["headers"].items()})
        elif method == "Runtime.exceptionThrown":
            self.problems.append(json.dumps(params["exceptionDetails"])[:500])
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            entry = params["entry"]
            # A refused connection while the service restarts is expected; nothing else is.
            if entry.get("source") != "network":
                self.problems.append(f"{entry.get('source')}: {entry.get('text')}")

    async def eval(self, expression: str) -> Any:
        result = await self.tools.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression[:200]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def until(self, condition: str, within: float = 20.0) -> None:
        """Wait (on DOM mutations, not a timer) until the JS ``condition`` is truthy."""
        js = f"""new Promise((resolve, reject) => {{
          const check = () => {{ if ({condition}) {{ done(true); return true; }} }};
          const done = (v) => {{ obs.disconnect(); clearTimeout(t); resolve(v); }};
          const obs = new MutationObserver(check);
          const t = setTimeout(() => {{ obs.disconnect(); resolve(null); }}, 8000);
          if (!check()) obs.observe(document.documentElement,
            {{subtree: true, childList: true, attributes: true, characterData: true}});
        }})"""
        async with asyncio.timeout(within):
            while True:
                value = await self.tools.call(
                    "Runtime.evaluate", timeout_s=12, expression=js, returnByValue=True,
                    awaitPromise=True,
                )
                if value["result"].get("value"):
                    return

    async def phase_of(self, run_id: str) -> str | None:
        value: str | None = await self.eval(
            f"document.querySelector('tr[data-run-id=\"{run_id}\"]')?.dataset.phase ?? null"
        )
        return value

    async def timeline_ids(self) -> list[str]:
        ids: list[str] = await self.eval(
            "[...document.querySelectorAll('#timeline [data-event-id]')]"
            ".map((n) => n.dataset.eventId)"
        )
        return ids

    async def click(self, selector: str) -> None:
        """A real mouse click in the middle of the element."""
        box = await self.eval(
            f"(() => {{ const n = document.querySelector('{selector}'); n.scrollIntoView("
            "{block: 'center'}); const r = n.getBoundingClientRect(); "
            "return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        x, y = box
        for kind in ("mousePressed", "mouseReleased"):
            await self.tools.call(
                "Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1
            )

    async def key(self, key: str, code: str, vk: int) -> None:
        # Enter carries its text, or a form's implicit submission does not happen.
        text = {"text": "\r"} if key == "Enter" else {}
        for kind in ("keyDown", "keyUp"):
            await self.tools.call(
                "Input.dispatchKeyEvent", type=kind, key=key, code=code,
                windowsVirtualKeyCode=vk, **(text if kind == "keyDown" else {}),
            )

    async def size(self, width: int, height: int) -> None:
        await self.tools.call(
            "Emulation.setDeviceMetricsOverride", width=width, height=height,
            deviceScaleFactor=1, mobile=False,
        )

    async def screenshot(self, path: Path) -> None:
        shot = await self.tools.call("Page.captureScreenshot", format="png")
        await asyncio.to_thread(path.write_bytes, base64.b64decode(shot["data"]))


def keep(shot: Path) -> None:
    """A copy in test-artifacts/ (git-ignored), to look at after the run."""
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / shot.name).write_bytes(shot.read_bytes())


# Injected by DevTools before the page's own script: records the main thread's long tasks
# (over 50 ms), which is what a user feels as the page freezing.
LONG_TASKS = """
window.longTasks = [];
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) window.longTasks.push(entry.duration);
}).observe({type: "longtask", buffered: true});
"""


async def open_dashboard(tools: DevTools, base: str) -> Page:
    page = Page(tools)
    await tools.call("Network.enable")
    await tools.call("Runtime.enable")
    await tools.call("Log.enable")
    await tools.call("Page.enable")
    await tools.call("Page.addScriptToEvaluateOnNewDocument", source=LONG_TASKS)
    await page.size(1280, 800)
    await page.goto(f"{base}/dashboard#token={TOKEN}")
    await page.until("document.querySelector('#board') && !document.querySelector('#board').hidden")
    return page


async def log_of(base: str, log: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(
        f"{base}{log}?limit=10000", headers={"X-Mantis-Token": TOKEN}
    ) as resp:
        assert resp.status == 200
        events: list[dict[str, Any]] = (await resp.json())["events"]
        return events


async def test_page_is_served_with_strict_security_headers(redis_url, spawn_service) -> None:
    svc = spawn_service(redis_url)
    async with aiohttp.ClientSession() as http:
        for path, kind in (
            ("/dashboard", "text/html"),
            ("/dashboard/app.js", "text/javascript"),
            ("/dashboard/app.css", "text/css"),
        ):
            async with http.get(svc.base + path) as resp:
                assert resp.status == 200, path
                assert resp.content_type == kind
                csp = resp.headers["Content-Security-Policy"]
                assert "default-src 'self'" in csp and "script-src 'self'" in csp
                assert "unsafe-inline" not in csp and "http" not in csp
                assert resp.headers["Referrer-Policy"] == "no-referrer"
                assert resp.headers["X-Content-Type-Options"] == "nosniff"
                body = await resp.text()
        async with http.get(svc.base + "/dashboard") as resp:
            html = await resp.text()
    # No inline script or style, nothing from another origin (works offline).
    assert "<script>" not in html and "<style" not in html and " style=" not in html
    assert "http://" not in html and "https://" not in html
    assert "onclick" not in html
    assert body  # the stylesheet is not empty


async def test_dashboard_follows_runs_live_across_a_service_restart(
    redis_url: str, spawn_service, tmp_path: Path
) -> None:
    svc = spawn_service(redis_url, MANTIS_HEARTBEAT_S="2")
    async with contextlib.AsyncExitStack() as stack:
        bridge = await stack.enter_async_context(
            AsyncBridge.from_url(redis_url, limits=LogLimits())
        )
        done = await bridge.open_run("done-run", tenant="acme")
        await done.set_phase("running")
        await done.append({"kind": "step", "step_index": 1, "type": "click", "target": "a"})
        await done.finish("halted", halt_class="captcha")
        await bridge.open_run("waiting-run", tenant="acme")
        # Another tenant's run: never on acme's page.
        await bridge.open_run("foreign-run", tenant="other")
        tools = await stack.enter_async_context(chromium(tmp_path))
        page = await open_dashboard(tools, svc.base)

        # The table, replayed from the feed.
        await page.until("document.querySelectorAll('#runs-body tr').length === 2")
        assert await page.phase_of("done-run") == "halted"
        assert await page.phase_of("waiting-run") == "queued"
        # Then live: a new run appears and changes phase.
        run = await bridge.open_run("live-run", tenant="acme")
        await page.until("document.querySelector('tr[data-run-id=\"live-run\"]')")
        assert await page.phase_of("live-run") == "queued"
        await run.set_phase("running")
        await page.until("document.querySelector('tr[data-run-id=\"live-run\"]')"
                         "?.dataset.phase === 'running'")
        assert await page.phase_of("foreign-run") is None

        # Select it with a click: its timeline streams live.
        await page.click('tr[data-run-id="live-run"]')
        await page.until("document.querySelectorAll('#timeline [data-event-id]').length === 2")
        step = 0

        async def rows(count: int) -> None:
            nonlocal step
            for _ in range(count):
                step += 1
                if step % 3 == 0:
                    row = {"title": f"item {step}", "price": step * 1.5, "in_stock": step % 2 == 0}
                    await run.append({"kind": "extract", "step_index": step, "row": row})
                else:
                    await run.append({
                        "kind": "step", "step_index": step, "type": "click",
                        "target": f"button#b{step}", "reasoning": f"reason <b>{step}</b>",
                    })

        await rows(12)
        await page.until("document.querySelectorAll('#timeline [data-event-id]').length === 14")
        assert await page.eval("document.querySelectorAll('#rows-table tbody tr').length") == 4
        assert await page.eval(
            "[...document.querySelectorAll('#rows-table thead th')].map((n) => n.textContent)"
        ) == ["title", "price", "in_stock"]
        # Text from a runner is text: no markup gets through.
        assert await page.eval("document.querySelector('#timeline b')") is None
        shot = tmp_path / "dashboard-1280x800.png"
        await page.screenshot(shot)
        keep(shot)

        # The service dies mid-run and comes back on the same port; rows keep coming,
        # some while it is down.
        os.kill(svc.proc.pid, signal.SIGKILL)
        svc.proc.wait()
        await page.until("document.querySelector('#run-status').dataset.state !== 'live'")
        await rows(5)
        svc = spawn_service(redis_url, port=svc.port, MANTIS_HEARTBEAT_S="2")
        await rows(5)
        await run.finish("complete")
        await page.until("document.querySelector('#timeline .ev-terminal')", within=40)
        await page.until("document.querySelector('tr[data-run-id=\"live-run\"]')"
                         "?.dataset.phase === 'complete'")

        log = await log_of(svc.base, "/v1/runs/live-run/events")
        shown = await page.timeline_ids()
        assert shown == [e["id"] for e in log]  # no duplicate, no hole, in order
        assert len(shown) == 2 + 22 + 2
        assert await page.eval("document.querySelectorAll('#rows-table tbody tr').length") == 7
        assert await page.eval("document.querySelector('#sum-result').textContent") == "complete"
        assert await page.eval("document.querySelector('#run-status').dataset.state") == "ended"

        shot = tmp_path / "dashboard-1280x800-ended.png"
        await page.screenshot(shot)
        keep(shot)
        await page.size(400, 800)
        shot = tmp_path / "dashboard-400x800-run.png"
        await page.screenshot(shot)
        keep(shot)
        await page.key("Escape", "Escape", 27)
        await page.until("document.querySelector('#detail').hidden")
        shot = tmp_path / "dashboard-400x800-runs.png"
        await page.screenshot(shot)
        keep(shot)
        # Dark, as the system asks (prefers-color-scheme).
        await tools.call(
            "Emulation.setEmulatedMedia",
            features=[{"name": "prefers-color-scheme", "value": "dark"}],
        )
        await page.size(1280, 800)
        await page.click('tr[data-run-id="done-run"]')
        await page.until("document.querySelector('#timeline .ev-terminal')")
        assert await page.eval(
            "getComputedStyle(document.body).backgroundColor"
        ) == "rgb(15, 18, 22)"
        shot = tmp_path / "dashboard-1280x800-dark.png"
        await page.screenshot(shot)
        keep(shot)

        # The token went only in a header: in no URL, no Referer, anywhere.
        assert page.requests
        with_token = []
        for request in page.requests:
            assert TOKEN not in request["url"], request["url"]
            headers = {k.lower(): v for k, v in request.get("headers", {}).items()}
            if headers.pop("x-mantis-token", None) == TOKEN:
                with_token.append(request)
            assert TOKEN not in json.dumps(headers)
        for headers in page.sent_headers:
            assert TOKEN not in json.dumps({k: v for k, v in headers.items()
                                            if k != "x-mantis-token"})
        # The header went to the ticket endpoints (and the sign-in check) only, by fetch.
        assert with_token and all(
            (r["method"] == "POST" and r["url"].endswith("/tickets"))
            or r["url"].endswith("/v1/events?limit=1")
            for r in with_token
        ), with_token
        assert all(r["type"] == "Fetch" for r in with_token)
        streams = [r["url"] for r in page.requests if r["type"] == "EventSource"]
        assert any("/v1/events?" in url for url in streams)
        assert any("/v1/runs/live-run/events?" in url for url in streams)
        assert all("ticket=" in url for url in streams)
        assert await page.eval("location.href") == f"{svc.base}/dashboard"
        assert await page.eval("sessionStorage.getItem('mantis.token')") == TOKEN
        assert page.problems == []


async def test_thousands_of_runs_keyboard_filter_and_search(
    redis_url: str, spawn_service, tmp_path: Path
) -> None:
    # DASH_RUNS=5000 measures a bigger table (the search below needs at most 10,000).
    total = int(os.environ.get("DASH_RUNS", "2000"))
    svc = spawn_service(redis_url)
    with Bridge.from_url(redis_url, limits=LogLimits()) as bridge:
        script = bridge.client.register_script(OPEN_RUN)
        pipe = bridge.client.pipeline(transaction=False)
        for i in range(total):
            _, keys, args = open_run_call(f"bulk-{i:05d}", "acme", bridge.limits)
            script(keys=keys, args=args, client=pipe)
        pipe.execute()
        for i in range(0, total, 10):
            bridge.run(f"bulk-{i:05d}").set_phase("running")
    async with chromium(tmp_path) as tools:
        page = await open_dashboard(tools, svc.base)
        started = await page.eval("performance.now()")
        await page.until(f"document.querySelectorAll('#runs-body tr').length === {total}", 40)
        await page.until("document.querySelectorAll('#runs-body tr[data-phase=running]').length"
                         f" === {total // 10}", 40)
        took_ms = await page.eval("performance.now()") - started
        long_tasks = await page.eval("window.longTasks")
        print(
            f"{total} runs rendered from the feed in {took_ms:.0f} ms; main-thread tasks over"
            f" 50 ms: {len(long_tasks)}, longest {max(long_tasks, default=0):.0f} ms"
        )
        # Newest first.
        assert await page.eval("document.querySelector('#runs-body tr').dataset.runId") == (
            f"bulk-{total - 1:05d}"
        )
        # Live changes to a full table: each costs the page little.
        await page.eval("window.longTasks = []")
        with Bridge.from_url(redis_url, limits=LogLimits()) as bridge:
            for i in range(1, 100, 2):
                bridge.run(f"bulk-{i:05d}").set_phase("running")
        await page.until("document.querySelector('tr[data-run-id=\"bulk-00099\"]')"
                         "?.dataset.phase === 'running'")
        live_tasks = await page.eval("window.longTasks")
        print(f"then 50 live phase moves: tasks over 50 ms: {live_tasks}")

        # Filter by phase, then search by id.
        await page.eval("(() => { const s = document.querySelector('#phase-filter');"
                        " s.value = 'running'; s.dispatchEvent(new Event('change')); })()")
        visible = "[...document.querySelectorAll('#runs-body tr')].filter((r) => !r.hidden)"
        assert await page.eval(f"{visible}.length") == total // 10 + 50
        assert await page.eval(f"{visible}.every((r) => r.dataset.phase === 'running')")
        await page.eval("(() => { const s = document.querySelector('#phase-filter');"
                        " s.value = ''; s.dispatchEvent(new Event('change')); })()")
        await page.click("#search")
        for char in "01999":
            await tools.call("Input.insertText", text=char)
        assert await page.eval(f"{visible}.map((r) => r.dataset.runId)") == ["bulk-01999"]
        assert f"1 of {total}" in await page.eval("document.querySelector('#counts').textContent")

        # Keyboard: focus the row, Enter opens its timeline, Escape closes it.
        await page.eval("document.querySelector('tr[data-run-id=\"bulk-01999\"]').focus()")
        await page.key("Enter", "Enter", 13)
        await page.until("document.querySelector('#detail-title').textContent === 'bulk-01999'")
        await page.until("document.querySelectorAll('#timeline [data-event-id]').length === 1")
        await page.key("Escape", "Escape", 27)
        await page.until("document.querySelector('#detail').hidden")
        assert await page.eval("document.activeElement.dataset.runId") == "bulk-01999"
        # Arrow keys move between visible rows.
        await page.eval("(() => { const s = document.querySelector('#search');"
                        " s.value = ''; s.dispatchEvent(new Event('input')); })()")
        await page.eval("document.querySelector('tr[data-run-id=\"bulk-01999\"]').focus()")
        await page.key("ArrowDown", "ArrowDown", 40)
        assert await page.eval("document.activeElement.dataset.runId") == "bulk-01998"
        shot = tmp_path / "dashboard-2000-runs-1280x800.png"
        await page.screenshot(shot)
        keep(shot)
        assert page.problems == []


async def test_sign_in_form_keeps_the_token_for_the_tab_only(
    redis_url: str, spawn_service, tmp_path: Path
) -> None:
    svc = spawn_service(redis_url)
    async with chromium(tmp_path) as tools:
        page = Page(tools)
        await tools.call("Network.enable")
        await tools.call("Runtime.enable")
        await tools.call("Log.enable")
        await page.size(400, 800)
        await page.goto(f"{svc.base}/dashboard")
        await page.until("!document.querySelector('#sign-in').hidden")
        shot = tmp_path / "dashboard-sign-in-400x800.png"
        await page.screenshot(shot)
        keep(shot)
        # A wrong token is refused and not kept.
        await page.click("#token-input")
        await tools.call("Input.insertText", text="not-a-token")
        await page.key("Enter", "Enter", 13)
        await page.until("document.querySelector('#sign-in-error').textContent !== ''")
        assert await page.eval("sessionStorage.getItem('mantis.token')") is None
        # The right one signs in, the empty feed waits (no run yet), and a reload keeps it.
        await page.click("#token-input")
        await tools.call("Input.insertText", text=TOKENS["other"])
        await page.key("Enter", "Enter", 13)
        await page.until("!document.querySelector('#board').hidden")
        await page.until("document.querySelector('#feed-status').dataset.state === 'live'")
        assert await page.eval("document.querySelector('#tenant').textContent") == "tenant other"
        with Bridge.from_url(redis_url, limits=LogLimits()) as bridge:
            bridge.open_run("first-of-other", tenant="other")
        await page.until("document.querySelector('tr[data-run-id=\"first-of-other\"]')")
        await page.reload()
        await page.until("document.querySelector('tr[data-run-id=\"first-of-other\"]')")
        # Signing out forgets it.
        await page.click("#sign-out")
        await page.until("!document.querySelector('#sign-in').hidden")
        assert await page.eval("sessionStorage.getItem('mantis.token')") is None
        assert all(TOKENS["other"] not in r["url"] for r in page.requests)


async def test_make_run_prints_a_dashboard_url_that_signs_in(spawn_service, tmp_path: Path) -> None:
    # What `make run` starts: the embedded store, the dev tenant, the demo run.
    svc = spawn_service(None, "--demo", MANTIS_TENANT_TOKENS="")
    # It listens just before it prints; a child process's output file has no event to await.
    for _ in range(400):
        text = await asyncio.to_thread(svc.log.read_text)
        if "dashboard: " in text:
            break
        await asyncio.sleep(0.05)
    line = next(x for x in text.splitlines() if x.startswith("dashboard: "))
    url = line.removeprefix("dashboard: ")
    assert url.startswith(f"{svc.base}/dashboard#token=")
    async with chromium(tmp_path) as tools:
        page = Page(tools)
        await tools.call("Network.enable")
        await page.size(1280, 800)
        await page.goto(url)
        await page.until("document.querySelector('tr[data-run-id=\"demo\"]')")
        await page.click('tr[data-run-id="demo"]')
        await page.until("document.querySelectorAll('#timeline [data-event-id]').length > 5")
        shot = tmp_path / "dashboard-demo-1280x800.png"
        await page.screenshot(shot)
        keep(shot)
        token = url.split("#token=", 1)[1]
        assert all(token not in r["url"] for r in page.requests)


async def test_timeline_renews_tickets_and_fills_events_of_any_name(
    redis_url: str, spawn_service, tmp_path: Path
) -> None:
    # Streams end every second, and a ticket stops reopening them after 2 s: the page
    # must fetch new tickets and resume with since=<last id>, losing and repeating nothing.
    svc = spawn_service(
        redis_url, MANTIS_STREAM_MAX_S="1", MANTIS_TICKET_TTL_S="1",
        MANTIS_TICKET_MAX_LIFE_S="2", MANTIS_HEARTBEAT_S="1",
    )
    async with contextlib.AsyncExitStack() as stack:
        bridge = await stack.enter_async_context(
            AsyncBridge.from_url(redis_url, limits=LogLimits())
        )
        run = await bridge.open_run("long-run", tenant="acme")
        await run.set_phase("running")
        tools = await stack.enter_async_context(chromium(tmp_path))
        page = await open_dashboard(tools, svc.base)
        await page.until("document.querySelector('tr[data-run-id=\"long-run\"]')")
        await page.click('tr[data-run-id="long-run"]')
        await page.until("document.querySelectorAll('#timeline [data-event-id]').length === 2")
        # Names EventSource only hands to a listener of that exact name: the page listens
        # to the common ones and fetches the others from the JSON page by their ids.
        kinds = ["step", "custom.kind", "extract", "ünïcode", "weird_name", "step"]
        for i in range(36):
            kind = kinds[i % len(kinds)]
            await run.append({"kind": kind, "step_index": i, "type": "click", "row": {"i": i}})
            if i % 6 == 5:
                # Spread over several stream lifetimes and ticket lives.
                await page.until(
                    "document.querySelectorAll('#timeline [data-event-id]').length"
                    f" === {2 + i + 1}", within=30,
                )
                await asyncio.sleep(0.4)  # let a soft limit and a ticket age pass between rows
        await run.finish("complete")
        await page.until("document.querySelector('#timeline .ev-terminal')", within=30)
        log = await log_of(svc.base, "/v1/runs/long-run/events")
        assert await page.timeline_ids() == [e["id"] for e in log]
        ticket_posts = [
            r for r in page.requests
            if r["method"] == "POST" and r["url"].endswith("/v1/runs/long-run/tickets")
        ]
        resumed = [
            r["url"] for r in page.requests
            if r["type"] == "EventSource" and "/v1/runs/long-run/events" in r["url"]
            and "since=" in r["url"]
        ]
        assert len(ticket_posts) >= 2 and resumed, (len(ticket_posts), resumed)
        fills = [
            r["url"] for r in page.requests
            if r["type"] == "Fetch" and "/v1/runs/long-run/events?ticket=" in r["url"]
        ]
        assert fills and all("&limit=" in url for url in fills)
        names = await page.eval(
            "[...document.querySelectorAll('#timeline .ev-kind')].map((n) => n.textContent)"
        )
        assert "custom.kind" in names and "weird_name" in names
        assert page.problems == []
