"""The fault suite's long variant: the same scenarios as ``tests/faults`` with more traffic and
outages held for minutes (``FILESCAN_FAULT_SCALE``, default 4 here: 4 times the uploads, every outage
120 s longer). Prints each scenario's ledger and how long it took; the scenarios assert the
promise (nothing lost, nothing available without a clean scan) as the tests do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    scale = os.environ.get("FILESCAN_FAULT_SCALE", "4")
    print(f"fault suite, long variant: FILESCAN_FAULT_SCALE={scale}", flush=True)
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/faults", "-s", "-q", "-p", "no:cacheprovider",
         "--durations=0", "-o", "timeout=3600"],
        cwd=REPO, env=os.environ | {"FILESCAN_FAULT_SCALE": scale}, check=False,
    )
    print(f"fault suite long variant exit code: {completed.returncode}")
