"""`m3ret-flows serve [--params params.yaml] [--interval-seconds N] [--only refresh,drift]` (or `python -m flows`)."""

from __future__ import annotations

import argparse
import sys

from flows.deployments import FLOWS, serve_all


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="m3ret-flows", description="Prefect deployments of the m3ret pipeline")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the scheduled deployments until interrupted (needs a Prefect API)")
    serve.add_argument("--params", default="params.yaml", help="params file the flows read (default: params.yaml)")
    serve.add_argument("--interval-seconds", type=int, default=None, help="run every N s instead of the cron schedules")
    serve.add_argument("--only", default=",".join(FLOWS), help=f"comma-separated subset of {list(FLOWS)}")
    serve.add_argument("--state-dir", default="data/refresh", help="refresh ledger and batches (default: data/refresh)")
    args = parser.parse_args(argv)
    serve_all(args.params, args.interval_seconds, tuple(n for n in args.only.split(",") if n), args.state_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
