"""Render manifests/install.yaml, the plain `kubectl apply` bundle, from the Helm chart.

The chart refuses to render without the three values every install must set, so the bundle is rendered
with ``existingSecret`` for both secrets (the bundle holds no secret: the user creates the two Secrets)
and a placeholder file host that the user replaces; the file's header says so.

    python scripts/render_bundle.py            # rewrite manifests/install.yaml
    python scripts/render_bundle.py --check    # exit 1 when it is out of date
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from scripts.generated import write_or_check

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "helm" / "filescan-operator"
TARGET = REPO / "manifests" / "install.yaml"
NAMESPACE = "filescan"
RELEASE = "filescan-operator"
PLACEHOLDER_HOST = "files.replace-me.invalid"
# The chart's oldest supported Kubernetes: the bundle does not change when the devstack's does.
KUBE_VERSION = "1.31.0"
VALUES = [
    "comm100.existingSecret=filescan-operator-comm100",
    "webhook.existingSecret=filescan-operator-webhook-tokens",
    f"fetch.allowedFileHosts={{{PLACEHOLDER_HOST}}}",
]

HEADER = f"""\
# filescan-operator: the plain install bundle, rendered from helm/filescan-operator with its default
# values (by `make manifests`; a test fails when it is out of date; do not edit by hand).
#
# Prefer the Helm chart. To use this file instead:
#   1. Replace {PLACEHOLDER_HOST} (FILESCAN_ALLOWED_FILE_HOSTS below) with the host(s) Comm100 serves
#      your uploaded files from, comma-separated.
#   2. kubectl create namespace {NAMESPACE}
#      kubectl label namespace {NAMESPACE} pod-security.kubernetes.io/enforce=restricted
#   3. Create the two Secrets the bundle refers to:
#      kubectl -n {NAMESPACE} create secret generic filescan-operator-comm100 --from-literal=token=COMM100_API_TOKEN
#      kubectl -n {NAMESPACE} create secret generic filescan-operator-webhook-tokens --from-literal=tokens=WEBHOOK_TOKEN
#   4. Apply it twice: the first run creates the CRDs and everything else, but ends with "no matches
#      for kind KopfPeering ... ensure CRDs are installed first" (that object needs its CRD to be
#      established); the second run creates it.
#      kubectl apply --server-side -f install.yaml
#      kubectl wait --for=condition=Established crd/filescans.comm100.io crd/kopfpeerings.kopf.dev
#      kubectl apply --server-side -f install.yaml
# Everything is in namespace {NAMESPACE}; other settings are the chart's defaults (values.yaml).
"""


def helm_binary() -> Path:
    from devstack.build import ensure_binaries

    return ensure_binaries().helm


def render(helm: Path | None = None) -> str:
    command = [
        str(helm or helm_binary()), "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
        "--include-crds", "--kube-version", KUBE_VERSION,
    ]
    for value in VALUES:
        command += ["--set", value]
    proc = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"helm template failed:\n{proc.stderr}")
    return HEADER + proc.stdout


def main() -> int:
    return write_or_check(__doc__ or "", TARGET, render, what="manifests/install.yaml", remake="make manifests")


if __name__ == "__main__":
    sys.exit(main())
