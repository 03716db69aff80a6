"""Start, stop and inspect one local control plane in a directory of its own.

Design decisions:

* Every process is started detached (its own session, output to ``DIR/logs/``) and recorded in
  ``DIR/state.json`` with its pid and command line, so ``down`` from another process stops exactly
  what ``up`` started, by pid, and never a recycled pid (the command line must still match).
* Ports are chosen free on 127.0.0.1 and kept in the state file, so a stopped component restarts
  on the same port (tests stop and restart the apiserver and etcd to simulate outages).
* Components authenticate as in a real cluster, with client certificates from one generated CA.
  The controller-manager and the pod runner use ``system:masters`` certificates rather than the
  per-controller service-account credentials a production cluster uses: fewer moving parts to
  start, and nothing under test depends on the controllers' own RBAC.
* It only ever writes the kubeconfig in its own directory; ``~/.kube/config`` is never touched.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devstack import pki as pki_mod
from devstack.build import KUBERNETES_VERSION, Binaries, ensure_binaries

NODE_NAME = "devstack-node"
SERVICE_CIDR = "10.0.0.0/24"
CONTROLLERS = [
    "job-controller",
    "garbage-collector-controller",
    "ttl-after-finished-controller",
    "pod-garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "replicaset-controller",
    "deployment-controller",
    "cronjob-controller",
    "disruption-controller",
]
COMPONENTS = ["etcd", "kube-apiserver", "kube-controller-manager", "pod-runner"]

_AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
"""


def log(message: str) -> None:
    print(f"[devstack] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _pid_alive(pid: int, marker: str) -> bool:
    """True when ``pid`` runs and its command line still contains ``marker`` (not a recycled pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":
        return False
    return marker.encode() in cmdline


def _kill(pid: int, marker: str, timeout: float = 10.0) -> None:
    if not _pid_alive(pid, marker):
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not _pid_alive(pid, marker):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(path: Path, server: str, ca: Path, cert: Path, key: Path, user: str) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "devstack", "cluster": {"server": server, "certificate-authority-data": _b64(ca)}}
        ],
        "users": [
            {"name": user, "user": {"client-certificate-data": _b64(cert), "client-key-data": _b64(key)}}
        ],
        "contexts": [{"name": "devstack", "context": {"cluster": "devstack", "user": user}}],
        "current-context": "devstack",
    }
    path.write_text(json.dumps(config, indent=2))
    path.chmod(0o600)


@dataclass
class Devstack:
    """A control plane rooted at ``dir``; create with :meth:`up` or attach with :meth:`load`."""

    dir: Path
    bins: Binaries
    ports: dict[str, int]
    audit: bool = False
    pids: dict[str, int] = field(default_factory=dict)
    entrypoints: dict[str, str] = field(default_factory=dict)
    """Image prefix → program, for pods whose containers have no command (see the pod runner)."""

    # ---- paths -------------------------------------------------------------------------------
    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports['apiserver']}"

    @property
    def audit_log(self) -> Path:
        return self.dir / "audit.log"

    @property
    def pki(self) -> pki_mod.Pki:
        return pki_mod.Pki(self.dir / "pki")

    @property
    def _state_file(self) -> Path:
        return self.dir / "state.json"

    # ---- lifecycle ---------------------------------------------------------------------------
    @classmethod
    def up(
        cls, directory: Path, *, audit: bool = False, entrypoints: dict[str, str] | None = None
    ) -> Devstack:
        directory = directory.resolve()
        state = directory / "state.json"
        if state.exists():
            existing = cls.load(directory)
            if any(existing.running().values()):
                raise RuntimeError(f"a devstack already runs in {directory}; run 'down' first")
        bins = ensure_binaries()
        directory.mkdir(parents=True, exist_ok=True)
        ports = {name: free_port() for name in ("etcd", "etcd_peer", "apiserver", "kcm")}
        stack = cls(dir=directory, bins=bins, ports=ports, audit=audit, entrypoints=entrypoints or {})
        started = time.monotonic()
        pki = pki_mod.generate(
            stack.pki.dir,
            {
                "admin": ("devstack-admin", "system:masters"),
                "controller-manager": ("system:kube-controller-manager", "system:masters"),
                "pod-runner": (f"system:node:{NODE_NAME}", "system:masters"),
            },
        )
        for user in ("admin", "controller-manager", "pod-runner"):
            cert, key = pki.client(user)
            name = "kubeconfig" if user == "admin" else f"{user}.kubeconfig"
            write_kubeconfig(directory / name, stack.server, pki.ca_cert, cert, key, user)
        (directory / "audit-policy.yaml").write_text(_AUDIT_POLICY)
        stack._save()
        try:
            for component in COMPONENTS:
                stack.start_process(component)
        except BaseException:
            stack.down()
            raise
        log(f"ready in {time.monotonic() - started:.1f}s: Kubernetes {KUBERNETES_VERSION} at {stack.server}")
        return stack

    @classmethod
    def load(cls, directory: Path) -> Devstack:
        directory = directory.resolve()
        data = json.loads((directory / "state.json").read_text())
        return cls(
            dir=directory,
            bins=Binaries.at(Path(data["cache"])),
            ports=data["ports"],
            audit=data.get("audit", False),
            pids={k: int(v) for k, v in data["pids"].items()},
            entrypoints=data.get("entrypoints", {}),
        )

    def _save(self) -> None:
        data = {
            "cache": str(self.bins.etcd.parent.parent),
            "ports": self.ports,
            "audit": self.audit,
            "pids": self.pids,
            "entrypoints": self.entrypoints,
            "kubernetes": KUBERNETES_VERSION,
        }
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self._state_file)

    def down(self) -> None:
        """Stop every process this stack started, in reverse order, and wait until each is gone."""
        for component in reversed(COMPONENTS):
            self.stop_process(component)

    # ---- components --------------------------------------------------------------------------
    def _marker(self, component: str) -> str:
        # A string found in the command line of that component of *this* stack only.
        return str(self.dir)

    def command(self, component: str) -> list[str]:
        d, p, pki = self.dir, self.ports, self.pki
        if component == "etcd":
            peer = f"http://127.0.0.1:{p['etcd_peer']}"
            client = f"http://127.0.0.1:{p['etcd']}"
            return [
                str(self.bins.etcd), "--name", "devstack", "--data-dir", str(d / "etcd"),
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"devstack={peer}", "--unsafe-no-fsync=true",
                "--log-level", "warn",
            ]
        if component == "kube-apiserver":
            cmd = [
                str(self.bins.kube_apiserver),
                f"--etcd-servers=http://127.0.0.1:{p['etcd']}",
                "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
                f"--secure-port={p['apiserver']}",
                f"--cert-dir={pki.dir}",
                f"--tls-cert-file={pki.serving_cert}", f"--tls-private-key-file={pki.serving_key}",
                f"--client-ca-file={pki.ca_cert}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki.sa_pub}",
                f"--service-account-signing-key-file={pki.sa_key}",
                "--authorization-mode=RBAC",
                "--enable-admission-plugins=NamespaceLifecycle,ServiceAccount,PodSecurity,"
                "DefaultStorageClass,ResourceQuota,LimitRanger,Priority",
                "--allow-privileged=true",
                # The lease reconciler refuses a loopback advertise address; pods reach the
                # apiserver through KUBERNETES_SERVICE_HOST, which the pod runner sets.
                "--endpoint-reconciler-type=none",
                "--v=1",
            ]
            if self.audit:
                cmd += [
                    f"--audit-policy-file={d / 'audit-policy.yaml'}",
                    f"--audit-log-path={self.audit_log}",
                    "--audit-log-format=json", "--audit-log-mode=batch",
                    "--audit-log-batch-max-wait=1s",
                ]
            return cmd
        if component == "kube-controller-manager":
            return [
                str(self.bins.kube_controller_manager),
                f"--kubeconfig={d / 'controller-manager.kubeconfig'}",
                "--leader-elect=false",
                f"--controllers={','.join(CONTROLLERS)}",
                f"--root-ca-file={pki.ca_cert}",
                f"--service-account-private-key-file={pki.sa_key}",
                "--use-service-account-credentials=false",
                "--bind-address=127.0.0.1", f"--secure-port={p['kcm']}",
                f"--cert-dir={d / 'kcm-certs'}",
                "--concurrent-job-syncs=10",
                "--v=1",
            ]
        if component == "pod-runner":
            return [
                sys.executable, "-m", "devstack.podrunner",
                "--server", self.server, "--ca", str(pki.ca_cert),
                "--cert", str(pki.client("pod-runner")[0]), "--key", str(pki.client("pod-runner")[1]),
                "--dir", str(d / "pods"), "--node-name", NODE_NAME,
                *(f"--image-entrypoint={prefix}={program}" for prefix, program in self.entrypoints.items()),
            ]
        raise ValueError(f"unknown component {component!r}; one of {COMPONENTS}")

    def start_process(self, component: str, *, timeout: float = 60.0) -> None:
        """Start ``component`` (same ports and data as before) and wait until it is ready."""
        if self.running().get(component):
            return
        logs = self.dir / "logs"
        logs.mkdir(exist_ok=True)
        env = dict(os.environ)
        # Pods run programs from the project's environment (there is no image to pull).
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        if component == "pod-runner":  # runs from the stack's dir: make this package importable
            env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
        with open(logs / f"{component}.log", "ab") as out:
            proc = subprocess.Popen(
                self.command(component), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env=env, cwd=self.dir,
            )
        self.pids[component] = proc.pid
        self._save()
        log(f"started {component} (pid {proc.pid})")
        self._wait_ready(component, proc, timeout)

    def stop_process(self, component: str) -> None:
        pid = self.pids.get(component)
        if pid is None:
            return
        _kill(pid, self._marker(component))
        log(f"stopped {component} (pid {pid})")

    def running(self) -> dict[str, bool]:
        return {c: c in self.pids and _pid_alive(self.pids[c], self._marker(c)) for c in COMPONENTS}

    # ---- readiness ---------------------------------------------------------------------------
    def ssl_context(self) -> ssl.SSLContext:
        """TLS settings to talk to the apiserver as the admin (trusting only the stack's CA)."""
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        cert, key = self.pki.client("admin")
        ctx.load_cert_chain(str(cert), str(key))
        return ctx

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        """GET ``path`` from the apiserver as the admin."""
        try:
            with urllib.request.urlopen(
                self.server + path, context=self.ssl_context(), timeout=timeout
            ) as resp:
                return int(resp.status), bytes(resp.read())
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def _probe(self, component: str) -> bool:
        try:
            if component == "etcd":
                url = f"http://127.0.0.1:{self.ports['etcd']}/health"
                with urllib.request.urlopen(url, timeout=2) as resp:
                    return bool(json.loads(resp.read()).get("health") == "true")
            if component == "kube-apiserver":
                return self.get("/readyz", timeout=2)[0] == 200
            if component == "kube-controller-manager":
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                url = f"https://127.0.0.1:{self.ports['kcm']}/healthz"
                with urllib.request.urlopen(url, context=ctx, timeout=2) as resp:
                    return int(resp.status) == 200
            if component == "pod-runner":
                status, body = self.get(f"/api/v1/nodes/{NODE_NAME}", timeout=2)
                if status != 200:
                    return False
                conditions = json.loads(body).get("status", {}).get("conditions", [])
                return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
        except (OSError, ValueError, urllib.error.URLError):
            return False
        return False

    def _wait_ready(self, component: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = (self.dir / "logs" / f"{component}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{component} exited with {proc.returncode}:\n{tail}")
            if self._probe(component):
                return
            time.sleep(0.1)
        raise RuntimeError(f"{component} not ready after {timeout}s; see {self.dir / 'logs'}")

    def status(self) -> dict[str, Any]:
        running = self.running()
        return {
            "dir": str(self.dir),
            "server": self.server,
            "kubeconfig": str(self.kubeconfig),
            "components": {
                c: {"pid": self.pids.get(c), "running": running[c], "ready": running[c] and self._probe(c)}
                for c in COMPONENTS
            },
        }

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run the stack's own kubectl with its kubeconfig."""
        proc = subprocess.run(
            [str(self.bins.kubectl), "--kubeconfig", str(self.kubeconfig), *args],
            input=input, capture_output=True, text=True, timeout=timeout, check=False,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc
