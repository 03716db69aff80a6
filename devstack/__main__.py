"""``python -m devstack build|up|down|status|demo``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from devstack.build import ensure_binaries
from devstack.cluster import Devstack


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "build", help="build (or find cached) etcd, kube-apiserver, kube-controller-manager, kubectl, helm"
    )
    for name, text in (("up", "start a control plane"), ("down", "stop it"), ("status", "say what runs")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--dir", type=Path, required=True, help="the stack's own directory")
        if name == "up":
            sub.add_argument("--audit", action="store_true", help="write an apiserver audit log to DIR/audit.log")
    demo = commands.add_parser("demo", help="the whole flow on a throwaway stack")
    demo.add_argument("--dir", type=Path, default=None, help="keep the stack's files here (default: a temp dir)")
    args = parser.parse_args(argv)

    if args.command == "build":
        bins = ensure_binaries()
        for path in bins.all():
            print(path)
        return 0
    if args.command == "up":
        stack = Devstack.up(args.dir, audit=args.audit)
        print(f"export KUBECONFIG={stack.kubeconfig}")
        return 0
    if args.command == "down":
        if not (args.dir / "state.json").exists():
            print(f"no devstack in {args.dir}", file=sys.stderr)
            return 0
        Devstack.load(args.dir).down()
        return 0
    if args.command == "status":
        if not (args.dir / "state.json").exists():
            print(f"no devstack in {args.dir}")
            return 1
        status = Devstack.load(args.dir).status()
        print(json.dumps(status, indent=2))
        return 0 if all(c["ready"] for c in status["components"].values()) else 1
    if args.command == "demo":
        from devstack.demo import run_demo

        return run_demo(args.dir)
    return 2


if __name__ == "__main__":
    sys.exit(main())
