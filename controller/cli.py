"""``filescan <command>``: one image, one CLI, three programs.

Each command's module is imported only when that command runs, so the scan Job does not pay for
FastAPI or kopf at start-up.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="filescan", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    webhook = commands.add_parser("webhook", help="receive Comm100 fileUploaded events")
    webhook.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    webhook.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    webhook.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="accept events without a token (local testing only; refused otherwise when no token is set)",
    )

    operator = commands.add_parser("operator", help="reconcile FileScans: scan Jobs, verdicts, reports")
    operator.add_argument("--health-host", default="0.0.0.0", help="address for liveness and metrics")
    operator.add_argument("--health-port", type=int, default=8081, help="liveness port (/healthz)")
    operator.add_argument("--metrics-port", type=int, default=9090, help="Prometheus metrics port (/metrics)")
    operator.add_argument("--priority", type=int, default=0, help="kopf peering priority")
    operator.add_argument("--standalone", action="store_true", help="no peering (single replica)")

    scan = commands.add_parser("scan", help="scan one file (the scan Job's program)")
    scan.add_argument("--url", default=None, help="the file to fetch (default: $FILESCAN_SCAN_URL)")
    scan.add_argument("--expected-size", type=int, default=None, help="bytes Comm100 says the file has")
    scan.add_argument("--engine", choices=["clamd", "clamscan"], default=None)
    scan.add_argument("--clamd-address", default=None, help="tcp://HOST:PORT or unix:PATH")
    scan.add_argument("--termination-log", default="/dev/termination-log")
    scan.add_argument("--max-bytes", type=int, default=None, help="hard byte limit on the download")
    return parser


_ENTRYPOINTS = {
    "webhook": "controller.webhook",
    "operator": "controller.handlers",
    "scan": "controller.scanner",
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module = importlib.import_module(_ENTRYPOINTS[args.command])
    result: int = module.main(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
