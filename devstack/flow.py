"""The whole product on the local stack: clamd, the Comm100 simulator, and our own programs
(``filescan operator`` and ``filescan webhook``) as local processes against a devstack.

Used by ``make demo``, the operator's integration tests and the fault suite, so that all of them
run the real programs with settings from the environment, as a Deployment would.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from devstack.clamd import ClamdProcess
from devstack.cluster import Devstack, free_port
from devstack.comm100sim import Comm100Simulator

REPO = Path(__file__).resolve().parent.parent
CRD = REPO / "manifests" / "crd-filescans.yaml"
FILESCAN = Path(sys.executable).parent / "filescan"
EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"

WEBHOOK_TOKEN = "demo-webhook-token-6b2d0f8e41c7"
COMM100_TOKEN = "demo-comm100-token-9a4e7c1d3b5f"



def wait_until(condition: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Program:
    """One ``filescan`` command running as a local process, with its output in a log file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    health_url: str
    process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

        def healthy() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.logs()[-3000:]}")
            try:
                return httpx.get(self.health_url, timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, timeout=timeout, what=f"{self.name} at {self.health_url}", interval=0.2)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL, as a node failure or the OOM killer would: no clean-up at all."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class Flow:
    """clamd, the simulator, the operator and the webhook for one namespace of a devstack."""

    stack: Devstack
    namespace: str
    workdir: Path
    clamd: ClamdProcess
    sim: Comm100Simulator
    operator: Program
    webhook: Program
    owns_clamd: bool = True
    operators: list[Program] = field(default_factory=list)
    """Every operator replica; :attr:`operator` is the first."""

    @classmethod
    @contextlib.contextmanager
    def running(
        cls,
        stack: Devstack,
        workdir: Path,
        *,
        namespace: str = "filescan",
        settings: Mapping[str, str] | None = None,
        clamd: ClamdProcess | None = None,
        webhook: bool = True,
        operators: list[tuple[str, ...]] | None = None,
    ) -> Iterator[Flow]:
        """Start everything (the CRD and namespace too, if missing); stop it all on exit.

        ``operators`` gives each replica's extra arguments (default: one ``--standalone``)."""
        workdir.mkdir(parents=True, exist_ok=True)
        install_crd(stack)
        if stack.kubectl("get", "namespace", namespace, check=False).returncode != 0:
            stack.kubectl("create", "namespace", namespace)
        own_clamd = clamd is None
        clamd = clamd or ClamdProcess.start(workdir / "clamd")
        sim = Comm100Simulator(token=COMM100_TOKEN).start()
        env = base_env(stack, namespace, clamd, sim) | dict(settings or {})
        replicas = [operator_program(workdir, env, f"operator-{i}", *args)
                    for i, args in enumerate(operators or [("--standalone",)])]
        hook = webhook_program(workdir, env)
        flow = cls(stack, namespace, workdir, clamd, sim, replicas[0], hook, owns_clamd=own_clamd,
                   operators=replicas)
        try:
            for replica in replicas:
                replica.start()
            if webhook:
                hook.start()
            yield flow
        finally:
            flow.stop()

    def stop(self) -> None:
        for program in [self.webhook, *self.operators]:
            program.stop()
        self.sim.stop()
        if self.owns_clamd:
            self.clamd.stop()

    # ---- driving it --------------------------------------------------------------------------
    def post(self, source: str, body: Mapping[str, Any], token: str | None = WEBHOOK_TOKEN) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        url = self.webhook.health_url.rsplit("/", 1)[0] + f"/webhooks/{source}"
        return httpx.post(url, json=dict(body), headers=headers, timeout=30)

    def filescans(self) -> list[dict[str, Any]]:
        out = self.stack.kubectl("get", "filescans", "-n", self.namespace, "-o", "json")
        items: list[dict[str, Any]] = json.loads(out.stdout)["items"]
        return items

    def jobs(self) -> list[dict[str, Any]]:
        out = self.stack.kubectl("get", "jobs", "-n", self.namespace, "-o", "json")
        items: list[dict[str, Any]] = json.loads(out.stdout)["items"]
        return items

    def wait_all_finished(self, count: int, timeout: float) -> list[dict[str, Any]]:
        """Wait until ``count`` FileScans exist and every one is Done or Failed."""
        def finished() -> list[dict[str, Any]] | None:
            items = self.filescans()
            done = [f for f in items if (f.get("status") or {}).get("phase") in ("Done", "Failed")]
            return items if len(items) >= count and len(done) == len(items) else None

        result: list[dict[str, Any]] = wait_until(finished, timeout=timeout,
                                                  what=f"{count} FileScans to finish", interval=0.5)
        return result


def install_crd(stack: Devstack) -> None:
    stack.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    stack.kubectl("wait", "--for", "condition=established", "--timeout=60s", "crd/filescans.comm100.io")


def base_env(stack: Devstack, namespace: str, clamd: ClamdProcess, sim: Comm100Simulator) -> dict[str, str]:
    """The settings a Helm install would give both programs, pointed at the local stack."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("FILESCAN_")}
    return inherited | {
        "KUBECONFIG": str(stack.kubeconfig),
        "FILESCAN_NAMESPACE": namespace,
        "FILESCAN_WEBHOOK_TOKENS": WEBHOOK_TOKEN,
        "FILESCAN_ALLOWED_FILE_HOSTS": "127.0.0.1",
        "FILESCAN_ALLOW_HTTP": "true",
        "FILESCAN_SCAN_IMAGE": "local/filescan-operator:dev",
        "FILESCAN_CLAMD_ADDRESS": clamd.address,
        "FILESCAN_COMM100_BASE_URL": sim.url,
        "FILESCAN_COMM100_TOKEN": COMM100_TOKEN,
    }


def operator_program(workdir: Path, env: Mapping[str, str], name: str, *extra: str) -> Program:
    health, metrics = free_port(), free_port()
    argv = [str(FILESCAN), "operator", "--health-host", "127.0.0.1", "--health-port", str(health),
            "--metrics-port", str(metrics), *(extra or ("--standalone",))]
    return Program(name, argv, dict(env), workdir / f"{name}.log", f"http://127.0.0.1:{health}/healthz")


def webhook_program(workdir: Path, env: Mapping[str, str]) -> Program:
    port = free_port()
    argv = [str(FILESCAN), "webhook", "--host", "127.0.0.1", "--port", str(port)]
    return Program("webhook", argv, dict(env), workdir / "webhook.log", f"http://127.0.0.1:{port}/healthz")


def ticket_event(guid: str, file_url: str, name: str, size: int) -> dict[str, Any]:
    """The seed's flat ticket body."""
    return {"event": "fileUploaded", "eventId": f"evt-{guid}", "ticketId": 4711, "guid": guid,
            "fileName": name, "fileExtension": name.rsplit(".", 1)[-1], "fileSize": size,
            "fileURL": file_url, "fileLocalPath": f"/attachments/{guid}/{name}"}


def livechat_event(guid: str, file_url: str, name: str, size: int) -> dict[str, Any]:
    """The newer live chat body: envelope at the top, file fields under ``payload``."""
    return {"event": "fileUploaded", "eventId": f"evt-{guid}", "eventTime": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                          time.gmtime()),
            "payload": {"chatId": 9001, "guid": guid, "fileName": name,
                        "fileExtension": name.rsplit(".", 1)[-1], "fileSize": size, "fileURL": file_url,
                        "fileLocalPath": f"/attachments/{guid}/{name}"}}
