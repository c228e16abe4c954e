"""``python -m runner_bridge``: the ``tail``, ``replay``, ``phase`` and ``work`` commands.

Exit codes: 0 done, 1 runtime failure (a bad line in a replay, the store unreachable, a
refused phase move), 2 usage or configuration error. Errors go to stderr and name what
was wrong; a Redis password never appears in them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urlsplit

import redis
from redis.exceptions import AuthenticationError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from runlog.calls import LogLimits
from runlog.connect import DEFAULT_MAX_CONNECTIONS, async_client, sync_client
from runlog.errors import (
    BridgeError,
    InvalidPhase,
    InvalidPhaseMove,
    InvalidRunId,
    InvalidWorker,
    RunNotFound,
    RunTerminal,
    StoreNotConfigured,
)
from runlog.logs import setup_logging
from runlog.phases import PHASES
from runlog.records import check_phase, check_run_id
from runlog.store_url import redact_url, resolve_redis_url

from . import worker_metrics
from .bridge import AsyncBridge, Bridge, limits_from_env
from .consumer import QueueSettings, check_worker, default_worker
from .lines import BadLine
from .replay import ReplayReport, replay
from .tail import DEFAULT_POLL_INTERVAL_S, Follower, TailReport
from .worker import (
    DEFAULT_GRACE_S,
    DEFAULT_PACE_S,
    Worker,
    WorkerOptions,
    WorkerReport,
    demo_handler,
    load_handler,
)
from .worker import Handler as JobHandler

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
PROG = "runner_bridge"
# Connecting must fail in seconds, not hang, when the store's host does not answer.
CONNECT_TIMEOUT_S = 5.0

Handler = Callable[["_Store", argparse.Namespace], int]
log = logging.getLogger("mantis.runner_bridge")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit code."""
    parser = build_parser()
    try:
        # JSON lines on stderr; quiet (warnings only) unless MANTIS_LOG_LEVEL asks for more,
        # so the command's own messages stay readable.
        setup_logging(default_level="WARNING")
    except ValueError as exc:
        parser.error(str(exc))
    args = parser.parse_args(argv)
    if args.command == "phase":
        try:
            check_phase(args.phase, args.halt_class)
        except InvalidPhase as exc:
            parser.error(str(exc))  # exits 2 before anything connects
    try:
        code = _run(args)
    except KeyboardInterrupt:
        code = 128 + signal.SIGINT
    log.info(
        "%s finished with exit code %d",
        args.command,
        code,
        extra={"command": args.command, "run_id": getattr(args, "run_id", None),
               "exit_code": code},
    )
    return code


def build_parser() -> argparse.ArgumentParser:
    """The command line: a global ``--redis`` and one sub-parser per command."""
    redis_opt = argparse.ArgumentParser(add_help=False)
    redis_opt.add_argument(
        "--redis", metavar="URL", default=argparse.SUPPRESS,
        help="redis:// or rediss:// URL (default: MANTIS_REDIS_URL, else the embedded store)",
    )
    parser = argparse.ArgumentParser(
        prog=PROG, parents=[redis_opt], description="Publish Mantis run events to Redis."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    tail = commands.add_parser(
        "tail", parents=[redis_opt], help="follow a growing reasoning.jsonl until the run ends"
    )
    tail.add_argument("file", type=Path, metavar="FILE")
    _run_options(tail)
    tail.add_argument(
        "--poll-interval", type=_positive_float, default=DEFAULT_POLL_INTERVAL_S, metavar="S",
        help=f"seconds between checks for new lines (default {DEFAULT_POLL_INTERVAL_S})",
    )
    tail.set_defaults(handler=_tail)

    rep = commands.add_parser(
        "replay", parents=[redis_opt], help="republish a recorded reasoning.jsonl with its pacing"
    )
    rep.add_argument("file", type=Path, metavar="FILE")
    _run_options(rep)
    rep.add_argument(
        "--speed", type=_non_negative_float, default=1.0, metavar="X",
        help="X times faster than recorded; 0 = as fast as possible (default 1)",
    )
    rep.set_defaults(handler=_replay)

    phase = commands.add_parser("phase", parents=[redis_opt], help="move an existing run")
    phase.add_argument("run_id", type=_run_id, metavar="RUN_ID")
    phase.add_argument("phase", choices=PHASES, metavar="PHASE", help=", ".join(PHASES))
    phase.add_argument("--halt-class", metavar="C", help="why the run halted (halted only)")
    phase.set_defaults(handler=_phase)

    work = commands.add_parser(
        "work", parents=[redis_opt], help="take runs from the work queue and run them"
    )
    how = work.add_mutually_exclusive_group()
    how.add_argument(
        "--demo", action="store_true",
        help="play each task suite's _micro_plan as step and extract rows at a human pace",
    )
    how.add_argument(
        "--handler", dest="handler_spec", metavar="MODULE:FUNCTION",
        help="run each job with this async function (it receives the job)",
    )
    work.add_argument(
        "--concurrency", type=_positive_int, default=1, metavar="N",
        help="runs worked on at once (default 1)",
    )
    work.add_argument(
        "--worker", type=_worker_name, default=None, metavar="NAME",
        help="this worker's name in the queue's consumer group (default HOST-PID)",
    )
    work.add_argument(
        "--pace-s", type=_non_negative_float, default=DEFAULT_PACE_S, metavar="S",
        help=f"demo: seconds between two steps (default {DEFAULT_PACE_S:g})",
    )
    work.add_argument(
        "--grace-s", type=_non_negative_float, default=DEFAULT_GRACE_S, metavar="S",
        help="on SIGTERM, seconds the runs in hand may take to finish before they are "
        f"handed back to the queue (default {DEFAULT_GRACE_S:g})",
    )
    work.set_defaults(handler=_work)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {text!r}")
    return value


def _worker_name(text: str) -> str:
    try:
        return check_worker(text)
    except InvalidWorker as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-id", required=True, type=_run_id, metavar="R")
    parser.add_argument("--tenant", required=True, type=_non_empty, metavar="T")


def _run_id(text: str) -> str:
    try:
        return check_run_id(text)
    except InvalidRunId as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _non_empty(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def _positive_float(text: str) -> float:
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text!r}")
    return value


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


class _Store:
    """Where the command publishes: the resolved URL and log limits, and how to connect."""

    def __init__(self, url: str, limits: LogLimits) -> None:
        self.url = url
        self.limits = limits

    def bridge(self) -> Bridge:
        """A sync bridge; fails fast (named errors) when the store cannot be used."""
        # A short-timeout PING first: the cluster probe of ``sync_client`` has no connect
        # timeout, and an unanswering host must not hang the command for minutes.
        probe = redis.Redis.from_url(self.url, socket_connect_timeout=CONNECT_TIMEOUT_S)
        try:
            probe.ping()
        finally:
            probe.close()
        return Bridge(sync_client(self.url), limits=self.limits)

    async def async_bridge(self, max_connections: int = DEFAULT_MAX_CONNECTIONS) -> AsyncBridge:
        """An asyncio bridge; fails fast (named errors) when the store cannot be used."""
        connecting = async_client(self.url, max_connections)
        client = await asyncio.wait_for(connecting, CONNECT_TIMEOUT_S)
        return AsyncBridge(client, limits=self.limits)


def _run(args: argparse.Namespace) -> int:
    """Configure, run the command, turn failures into messages and exit codes."""
    try:
        url = resolve_redis_url(getattr(args, "redis", None))
        store = _Store(url, limits_from_env())
    except (StoreNotConfigured, ValueError) as exc:
        return _fail(args, str(exc), EXIT_USAGE)
    try:
        redis.Redis.from_url(url).close()  # only parses the URL: nothing connects yet
    except ValueError as exc:
        message = f"unusable Redis URL {redact_url(url)}: {_scrub(str(exc), url)}"
        return _fail(args, message, EXIT_USAGE)
    where = f"the store at {redact_url(url)}"
    handler: Handler = args.handler
    try:
        return handler(store, args)
    except AuthenticationError:
        return _fail(args, f"{where} refused the credentials", EXIT_FAILURE)
    except (RedisConnectionError, RedisTimeoutError, TimeoutError) as exc:
        reason = _scrub(str(exc), url) or f"no answer in {CONNECT_TIMEOUT_S:g} s"
        return _fail(args, f"cannot reach {where}: {reason}", EXIT_FAILURE)
    except OSError as exc:
        return _fail(args, str(exc), EXIT_FAILURE)  # the input file, not the store
    except (InvalidRunId, InvalidPhase) as exc:
        return _fail(args, str(exc), EXIT_USAGE)
    except BridgeError as exc:
        return _fail(args, str(exc), EXIT_FAILURE)
    except RedisError as exc:
        return _fail(args, f"store error: {_scrub(str(exc), url)}", EXIT_FAILURE)


def _tail(store: _Store, args: argparse.Namespace) -> int:
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signum)
        stop.set()  # the follower ends between two batches or polls

    previous = {signum: signal.signal(signum, on_signal) for signum in _STOP_SIGNALS}
    follower: Follower | None = None
    try:
        with store.bridge() as bridge:
            follower = Follower(
                bridge, args.file, args.run_id, args.tenant,
                poll_interval=args.poll_interval, on_bad_line=_print_bad_line, stop=stop,
            )
            report = follower.run()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if follower is not None:
            _print_tail_summary(args.run_id, follower.report)
    if report.final_phase is None:
        return 128 + (received[0] if received else signal.SIGTERM)
    return EXIT_OK


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _print_bad_line(bad: BadLine) -> None:
    print(str(bad), file=sys.stderr, flush=True)


def _print_tail_summary(run_id: str, report: TailReport) -> None:
    state = (
        f"run {run_id!r} is {report.final_phase}" if report.final_phase
        else f"stopped before run {run_id!r} ended"
    )
    print(
        f"tail: {state}; published {report.published} lines, "
        f"skipped {report.skipped} bad lines",
        flush=True,
    )


def _replay(store: _Store, args: argparse.Namespace) -> int:
    report = asyncio.run(_replay_async(store, args))
    again = f" ({report.already_published} already published)" if report.already_published else ""
    print(f"replay: published {report.published} lines to run {args.run_id!r}{again}", flush=True)
    if report.bad_line is not None:
        return _fail(args, f"stopped at {report.bad_line}", EXIT_FAILURE)
    return EXIT_OK


async def _replay_async(store: _Store, args: argparse.Namespace) -> ReplayReport:
    bridge = await store.async_bridge()
    try:
        return await replay(bridge, args.file, args.run_id, args.tenant, args.speed)
    finally:
        await bridge.aclose()


def _phase(store: _Store, args: argparse.Namespace) -> int:
    with store.bridge() as bridge:
        try:
            event_id = bridge.run(args.run_id).set_phase(args.phase, halt_class=args.halt_class)
        except (InvalidPhaseMove, RunTerminal) as exc:
            return _fail(args, f"cannot move to {args.phase!r}: {exc}", EXIT_FAILURE)
        except RunNotFound:
            return _fail(args, f"no run {args.run_id!r} in the store", EXIT_FAILURE)
    print(f"run {args.run_id!r} is now {args.phase} (event {event_id})", flush=True)
    return EXIT_OK


def _work(store: _Store, args: argparse.Namespace) -> int:
    try:
        settings = QueueSettings.from_env()
        if args.demo:
            handler = demo_handler(args.pace_s)
        elif args.handler_spec:
            handler = load_handler(args.handler_spec)
        else:
            raise ValueError(
                "work needs --demo or --handler MODULE:FUNCTION; a runner of its own takes "
                "jobs with Bridge.jobs() (see docs/queue.md)"
            )
    except ValueError as exc:
        return _fail(args, str(exc), EXIT_USAGE)
    options = WorkerOptions(
        worker=args.worker or default_worker(),
        concurrency=args.concurrency,
        grace_s=args.grace_s,
        settings=settings,
    )
    # A worker is a long-running process: its claims, takeovers and hand-backs are what an
    # operator reads, so it logs at INFO unless MANTIS_LOG_LEVEL says otherwise.
    setup_logging(default_level="INFO")
    try:
        metrics_port = worker_metrics.serve_from_env()
    except (ValueError, OSError) as exc:
        return _fail(args, f"metrics: {exc}", EXIT_USAGE)
    if metrics_port is not None:
        log.info("serving metrics on port %d", metrics_port)
    report = asyncio.run(_work_async(store, options, handler))
    print(
        f"work: took {report.taken} runs, finished {report.finished}, handed back "
        f"{report.handed_back}, lost {report.lost} to takeover, failed {report.failed}",
        flush=True,
    )
    return EXIT_OK


async def _work_async(
    store: _Store, options: WorkerOptions, handler: JobHandler
) -> WorkerReport:
    # Each slot may hold a blocking read, a keep-alive and a write at once; a keep-alive
    # left waiting for a pooled connection past the claim timeout would lose its run.
    connections = max(DEFAULT_MAX_CONNECTIONS, 3 * options.concurrency + 2)
    bridge = await store.async_bridge(connections)
    try:
        worker = Worker(bridge, handler, options)
        loop = asyncio.get_running_loop()
        for signum in _STOP_SIGNALS:
            loop.add_signal_handler(signum, worker.shutdown)
        print(
            f"worker {options.worker}: waiting for runs on {redact_url(store.url)} "
            f"(concurrency {options.concurrency}, claim timeout "
            f"{options.settings.claim_timeout_s:g} s)",
            flush=True,
        )
        try:
            return await worker.run()
        finally:
            for signum in _STOP_SIGNALS:
                loop.remove_signal_handler(signum)
    finally:
        await bridge.aclose()


def _fail(args: argparse.Namespace, message: str, code: int) -> int:
    print(f"{PROG} {args.command}: error: {message}", file=sys.stderr, flush=True)
    return code


def _scrub(text: str, url: str) -> str:
    """``text`` with the URL's password masked, should a library message quote it."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return text
    return text.replace(password, "***") if password else text
