"""``python -m bench``: run the benchmark (``--smoke``: tiny and correctness only)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import replace
from pathlib import Path

from .sizes import MODES
from .suite import GROUPS, expand_only, plan, run_suite

RESULTS = Path(__file__).resolve().parent / "results"


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--smoke", action="store_true", help="tiny sizes, correctness only")
    size.add_argument("--quick", action="store_true", help="one repetition, shorter windows")
    parser.add_argument("--reps", type=int, help="repetitions per scenario (overrides the mode)")
    names = [e.key for e in plan(MODES["full"])]
    parser.add_argument(
        "--only",
        help=f"comma-separated scenarios: {','.join(names)}; or a group: {','.join(GROUPS)}",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    parser.add_argument(
        "--profile", type=int, nargs="?", const=30_000, metavar="DELIVERIES_PER_S",
        help="also profile the service with py-spy under fan-out at this rate (default 30000)",
    )
    parser.add_argument("--profile-seconds", type=float, default=20.0)
    parser.add_argument(
        "--profile-only", action="store_true",
        help="run only the profiles (implies --profile), no scenario",
    )
    args = parser.parse_args(argv)
    if args.only:
        unknown = expand_only(set(args.only.split(","))) - set(names)
        if unknown:
            parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    sizes = MODES["smoke" if args.smoke else "quick" if args.quick else "full"]
    if args.reps:
        sizes = replace(sizes, reps=args.reps)
    only: set[str] | None = expand_only(set(args.only.split(","))) if args.only else None
    profile_rate = args.profile
    if args.profile_only:
        only, profile_rate = set(), profile_rate or 30_000
    return asyncio.run(run_suite(
        sizes, only=only, out_dir=args.out, profile_rate=profile_rate,
        profile_s=args.profile_seconds,
    ))


if __name__ == "__main__":
    sys.exit(main())
