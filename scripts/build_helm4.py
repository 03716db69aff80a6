"""Build helm 4 (for the chart checks) into the devstack's binary cache, the way devstack builds helm 3:
``go install`` from the Go module proxy at a pinned version. About 5 minutes on two cores the first time;
a no-op afterwards. Prints the binary's path.

    python scripts/build_helm4.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HELM4_VERSION = "v4.3.2"


def helm4_path() -> Path:
    from devstack.build import cache_root

    return cache_root() / f"helm-{HELM4_VERSION}" / "helm"


def ensure_helm4() -> Path:
    target = helm4_path()
    if target.exists():
        return target
    if shutil.which("go") is None:
        raise RuntimeError("the Go toolchain is needed to build helm 4; 'go' is not on PATH")
    with tempfile.TemporaryDirectory(prefix="helm4-") as work:
        proc = subprocess.run(
            ["go", "install", "-trimpath", "-ldflags", "-s -w", f"helm.sh/helm/v4/cmd/helm@{HELM4_VERSION}"],
            env={**os.environ, "GOBIN": work}, capture_output=True, text=True, check=False, timeout=1800,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"go install helm v4 failed:\n{proc.stderr[-4000:]}")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(Path(work) / "helm"), target)
    return target


if __name__ == "__main__":
    sys.stdout.write(f"{ensure_helm4()}\n")
