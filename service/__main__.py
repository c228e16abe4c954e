"""``python -m service``: serve the API (``--demo`` also runs a demo worker and run)."""

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
from .auth import TokenConfigError, TokenTable
from .demo import demo_instructions, run_demo
from .embedded import EmbeddedStore
from .settings import Settings, SettingsError

log = logging.getLogger("mantis.service")


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
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
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
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
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
