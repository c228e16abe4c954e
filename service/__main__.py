"""``python -m service``: serve the API (``--demo`` also runs a demo worker and run).

SIGTERM drains: ``/readyz`` fails at once so the load balancer stops sending new clients,
the pod keeps serving for ``MANTIS_DRAIN_S``, then ends every stream at an event boundary
(clients resume elsewhere by cursor) and exits 0 within ``SHUTDOWN_GRACE_S`` more.
SIGINT (Ctrl-C) skips the drain.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import signal
import sys

from aiohttp import web

from runlog.logs import setup_logging
from runlog.store_url import redact_url

from .app import create_app
from .appkeys import ADMISSION, HUB
from .auth import TokenConfigError, TokenTable
from .demo import demo_instructions, run_demo
from .embedded import EmbeddedStore
from .hub import DRAINED
from .settings import Settings, SettingsError

log = logging.getLogger("mantis.service")

# After the drain, how long requests still in flight get before they are cancelled. The
# systemd unit's TimeoutStopSec must exceed MANTIS_DRAIN_S plus this.
SHUTDOWN_GRACE_S = 5.0


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    parser.add_argument(
        "--demo", action="store_true",
        help="also run a demo worker and submit a demo run through the queue",
    )
    parser.add_argument(
        "--loop",
        choices=("auto", "uvloop", "asyncio"),
        default="auto",
        help="event loop (auto: uvloop when installed)",
    )
    return parser.parse_args(argv)


async def serve(settings: Settings, demo: bool) -> None:
    embedded: EmbeddedStore | None = None
    redis_url = settings.redis_url
    if redis_url is None:
        embedded = EmbeddedStore()
        redis_url = embedded.start()
        embedded.publish_url()
        print(f"embedded store: {redis_url} (in memory; runner_bridge finds it on this machine)")
    else:
        print(f"store: {redact_url(redis_url)}")
    if settings.tenant_tokens:
        tokens, dev_token = TokenTable.parse(settings.tenant_tokens), None
    else:
        tokens, dev_token = TokenTable.dev()
    app = create_app(settings, tokens, redis_url)
    runner = web.AppRunner(
        app, handler_cancellation=True, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_S
    )
    await runner.setup()
    # Everything allocated so far lives as long as the process: keep it out of the
    # collector's scans, which otherwise show up as latency stalls under fan-out.
    gc.freeze()
    site = web.TCPSite(runner, settings.host, settings.port, reuse_address=True)
    await site.start()
    base = f"http://{settings.host}:{settings.port}"
    print(f"serving on {base}", flush=True)
    demo_task = None
    if dev_token is not None:
        print(f"dev tenant token (printed once, not logged): {dev_token}")
    # The token rides in the fragment, which the browser never sends to a server.
    fragment = f"#token={dev_token}" if dev_token is not None else ""
    print(f"dashboard: {base}/dashboard{fragment}", flush=True)
    if demo:
        tenant = tokens.entries[0][0]
        demo_task = asyncio.create_task(run_demo(redis_url, tenant))
        token_hint = dev_token if dev_token is not None else "$YOUR_TOKEN"
        print(demo_instructions(base, token_hint), flush=True)
    stop = asyncio.Event()
    received: list[signal.Signals] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig)
        if sig == signal.SIGTERM:
            app[ADMISSION].start_draining()  # /readyz answers 503 from now on
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, on_signal, sig)
    try:
        await stop.wait()
        if received[:1] == [signal.SIGTERM] and settings.drain_s > 0:
            log.info("SIGTERM: draining for %s s", settings.drain_s)
            stop.clear()
            # A second signal cuts the drain short.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), settings.drain_s)
        if HUB in app:
            app[HUB].end_all(DRAINED)  # at an event boundary: clients resume elsewhere
    finally:
        if demo_task is not None:
            demo_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await demo_task
        await runner.cleanup()
        if embedded is not None:
            embedded.stop()


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    try:
        setup_logging()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    missing = settings.exposure_problems()
    if missing:
        print(
            f"error: listening on {settings.host}, which is not a loopback address, needs "
            f"{', '.join(missing)} (refusing to start without it)",
            file=sys.stderr,
        )
        return 2
    try:
        TokenTable.parse(settings.tenant_tokens) if settings.tenant_tokens else None
    except TokenConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    factory = None
    if args.loop in ("auto", "uvloop"):
        try:
            import uvloop

            factory = uvloop.new_event_loop
        except ImportError:
            if args.loop == "uvloop":
                print("error: --loop uvloop but uvloop is not installed", file=sys.stderr)
                return 2
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(settings, args.demo))
    return 0


if __name__ == "__main__":
    sys.exit(main())
