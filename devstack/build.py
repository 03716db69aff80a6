"""Build the local control plane's binaries from the Go module proxy, once per version.

Kubernetes publishes no binaries we can reach here (only the module proxy is on the network), so
etcd, kube-apiserver, kube-controller-manager, kubectl and helm are compiled from their Go modules.

Design decisions:

* Each tool is built in a throwaway wrapper module of its own, because their ``k8s.io/*``
  requirements differ. ``k8s.io/kubernetes`` points its staging modules at ``./staging`` with
  ``replace`` directives that do not apply to a dependency, so the wrapper pins every one of them
  to the matching ``v0.<minor>.<patch>`` release; the list is read from the downloaded go.mod, never
  typed, so a version bump needs no edit here.
* Binaries land in a cache folder keyed by tool and version (``~/.cache/filescan-devstack`` by
  default, ``FILESCAN_DEVSTACK_CACHE`` to move it), written under a temporary name and renamed, so
  an interrupted build never leaves a half binary that a later run would trust.
* The flags are upstream's (``CGO_ENABLED=0``, ``-tags selinux,notest``, ``-trimpath``,
  ``-s -w``) plus version ldflags, so ``/version`` reports a real semver that Helm accepts.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

KUBERNETES_VERSION = "v1.37.2"
ETCD_VERSION = "v3.6.16"
HELM_VERSION = "v3.21.4"

_BUILD_FLAGS = ["-trimpath", "-tags", "selinux,notest"]


def cache_root() -> Path:
    """Where built binaries live; outside the repo so clean clones on this machine share it."""
    env = os.environ.get("FILESCAN_DEVSTACK_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "filescan-devstack"


@dataclass(frozen=True)
class Binaries:
    """Paths of every binary the devstack runs."""

    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kubectl: Path
    helm: Path

    @classmethod
    def at(cls, root: Path) -> Binaries:
        k8s = root / f"kubernetes-{KUBERNETES_VERSION}"
        return cls(
            etcd=root / f"etcd-{ETCD_VERSION}" / "etcd",
            kube_apiserver=k8s / "kube-apiserver",
            kube_controller_manager=k8s / "kube-controller-manager",
            kubectl=k8s / "kubectl",
            helm=root / f"helm-{HELM_VERSION}" / "helm",
        )

    def all(self) -> list[Path]:
        return [self.etcd, self.kube_apiserver, self.kube_controller_manager, self.kubectl, self.helm]


def progress(message: str) -> None:
    print(f"[devstack build] {message}", file=sys.stderr, flush=True)


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env["CGO_ENABLED"] = "0"
    env.setdefault("GOFLAGS", "-buildvcs=false")
    # The wrapper modules are throwaway: never let them pick a newer toolchain than the machine's.
    env.setdefault("GOTOOLCHAIN", "local")
    return env


def _go(args: list[str], cwd: Path) -> str:
    proc = subprocess.run(
        ["go", *args], cwd=cwd, env=_go_env(), capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"go {' '.join(args)} failed in {cwd}:\n{proc.stderr[-4000:]}")
    return proc.stdout


def _version_ldflags(version: str) -> str:
    match = re.fullmatch(r"v(\d+)\.(\d+)\.(\d+)", version)
    if not match:
        raise ValueError(f"not a release version: {version}")
    major, minor = match.group(1), match.group(2)
    build_date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    values = {
        "gitVersion": version,
        "gitMajor": major,
        "gitMinor": minor,
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": build_date,
    }
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {pkg}.{key}={value}" for key, value in values.items()]
    return " ".join(flags)


def staging_pins(kubernetes_gomod: str, version: str) -> dict[str, str]:
    """Map each staging module that go.mod points at ./staging to its published release.

    ``v1.37.2`` publishes its staging modules as ``v0.37.2``.
    """
    staging_version = "v0." + version.removeprefix("v1.")
    pins = {}
    for match in re.finditer(r"^\s*(k8s\.io/[\w.-]+)\s+=>\s+\./staging/", kubernetes_gomod, re.M):
        pins[match.group(1)] = staging_version
    if not pins:
        raise RuntimeError("found no staging replace directives in k8s.io/kubernetes's go.mod")
    return pins


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _install(built: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".partial")
    shutil.copy2(built, tmp)
    tmp.chmod(0o755)
    tmp.replace(target)


def _wrapper(name: str, gomod: str) -> tempfile.TemporaryDirectory[str]:
    work = tempfile.TemporaryDirectory(prefix=f"devstack-{name}-")
    Path(work.name, "go.mod").write_text(gomod)
    return work


def build_kubernetes(bins: Binaries) -> None:
    targets = [bins.kube_apiserver, bins.kube_controller_manager, bins.kubectl]
    if all(t.exists() for t in targets):
        progress(f"kubernetes {KUBERNETES_VERSION}: cached")
        return
    progress(f"kubernetes {KUBERNETES_VERSION}: resolving modules")
    with _wrapper("kubernetes", "module devstack.local/kubernetes\n\ngo 1.26.0\n") as work:
        wd = Path(work)
        info = json.loads(_go(["mod", "download", "-json", f"k8s.io/kubernetes@{KUBERNETES_VERSION}"], wd))
        pins = staging_pins(Path(info["GoMod"]).read_text(), KUBERNETES_VERSION)
        edits = [f"-replace={mod}={mod}@{ver}" for mod, ver in sorted(pins.items())]
        _go(["mod", "edit", f"-require=k8s.io/kubernetes@{KUBERNETES_VERSION}", *edits], wd)
        packages = [f"k8s.io/kubernetes/cmd/{t.name}" for t in targets]
        for pkg in packages:
            _go(["get", "-tool", pkg], wd)
        progress(
            f"kubernetes {KUBERNETES_VERSION}: compiling {', '.join(t.name for t in targets)} "
            "(cold: ~20-40 min on 2 cores)"
        )
        started = time.monotonic()
        out = wd / "out"
        out.mkdir()
        ldflags = _version_ldflags(KUBERNETES_VERSION)
        _go(["build", *_BUILD_FLAGS, "-ldflags", ldflags, "-o", f"{out}/", *packages], wd)
        for target in targets:
            _install(out / target.name, target)
        progress(f"kubernetes {KUBERNETES_VERSION}: built in {time.monotonic() - started:.0f}s")


def build_etcd(bins: Binaries) -> None:
    if bins.etcd.exists():
        progress(f"etcd {ETCD_VERSION}: cached")
        return
    progress(f"etcd {ETCD_VERSION}: compiling")
    started = time.monotonic()
    with _wrapper("etcd", "module devstack.local/etcd\n\ngo 1.26.0\n") as work:
        wd = Path(work)
        _go(["get", "-tool", f"go.etcd.io/etcd/server/v3@{ETCD_VERSION}"], wd)
        out = wd / "etcd"
        _go(["build", "-trimpath", "-ldflags", "-s -w", "-o", str(out), "go.etcd.io/etcd/server/v3"], wd)
        _install(out, bins.etcd)
    progress(f"etcd {ETCD_VERSION}: built in {time.monotonic() - started:.0f}s")


def build_helm(bins: Binaries) -> None:
    if bins.helm.exists():
        progress(f"helm {HELM_VERSION}: cached")
        return
    progress(f"helm {HELM_VERSION}: compiling")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="devstack-helm-") as work:
        env = _go_env() | {"GOBIN": work}
        proc = subprocess.run(
            ["go", "install", "-trimpath", "-ldflags", "-s -w", f"helm.sh/helm/v3/cmd/helm@{HELM_VERSION}"],
            env=env, cwd=work, capture_output=True, text=True, check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"go install helm failed:\n{proc.stderr[-4000:]}")
        _install(Path(work) / "helm", bins.helm)
    progress(f"helm {HELM_VERSION}: built in {time.monotonic() - started:.0f}s")


def ensure_binaries() -> Binaries:
    """Build whatever is missing from the cache and return the paths of all binaries."""
    root = cache_root()
    bins = Binaries.at(root)
    if all(p.exists() for p in bins.all()):
        return bins
    if shutil.which("go") is None:
        raise RuntimeError("the Go toolchain is needed to build the devstack binaries; 'go' is not on PATH")
    with _locked(root):
        started = time.monotonic()
        build_etcd(bins)
        build_helm(bins)
        build_kubernetes(bins)
        progress(f"all binaries ready in {root} ({time.monotonic() - started:.0f}s)")
    return bins
