"""What the generators in ``scripts/`` share: write the generated file, or with ``--check`` fail
when the file in the tree differs from what would be written."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path


def write_or_check(description: str, target: Path, render: Callable[[], str], *, what: str, remake: str) -> int:
    """The generator's ``main``: 0 when ``target`` was written (or is current, with ``--check``), 1
    when ``--check`` finds it stale or missing (``remake`` is the command that fixes it)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--check", action="store_true", help=f"fail when {what} is out of date")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not target.exists() or target.read_text() != text:
            sys.stderr.write(f"{what} is out of date: run `{remake}`\n")
            return 1
        return 0
    target.write_text(text)
    return 0
