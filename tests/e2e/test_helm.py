"""End to end, as a user runs it: ``helm install`` the chart into the devstack, post Comm100 events to
the chart's webhook pod, and see the right Comm100 calls and ``kubectl get filescans`` come out.

The stack is a dedicated one (started here with the image-entrypoint mapping, so the pod runner runs
the chart's containers, which have no ``command``, as the ``filescan`` program) and stopped at the end.
Everything the chart renders goes through the real apiserver: the namespace enforces the ``restricted``
Pod Security Standard, and the webhook and the operator talk to the apiserver with their own
ServiceAccount tokens, so the chart's RBAC is what they really get.

What a real cluster does and this does not (see the README): pods share the host's network (hence
127.0.0.1 listeners on free ports from ``devstack-values.yaml`` and --set), Services do not route (the
test posts to the webhook pod's port), no image is pulled, probes, NetworkPolicies, resources and
securityContext are not enforced, and clamd is a local process instead of the chart's Deployment.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from devstack.clamd import ClamdProcess
from devstack.cluster import Devstack, free_port
from devstack.comm100sim import Comm100Simulator
from tests.fixtures.clamd import eicar
from tests.fixtures.filescans import event_body
from tests.fixtures.waiting import wait_for

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "filescan-operator"
IMAGE_PREFIX = "ghcr.io/comm100/filescan-operator"
RELEASE = "filescan-operator"


@dataclass
class Installed:
    stack: Devstack
    namespace: str
    webhook_url: str
    webhook_token: str
    sim: Comm100Simulator
    values_file: Path

    def helm(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return helm(self.stack, *args, timeout=timeout)

    def filescans(self) -> dict[str, dict[str, Any]]:
        listed = self.stack.kubectl("get", "filescans", "-n", self.namespace, "-o", "json")
        return {item["metadata"]["name"]: item for item in json.loads(listed.stdout)["items"]}

    def pod_logs(self, component: str) -> str:
        """What the component's containers wrote (the pod runner keeps logs in files, no kubectl logs)."""
        out = []
        for log in sorted((self.stack.dir / "pods").glob(f"{self.namespace}_{RELEASE}-{component}-*/*.log")):
            out.append(f"--- {log.parent.name}/{log.name}\n{log.read_text(errors='replace')[-4000:]}")
        return "\n".join(out) or f"(no logs for {component})"


def helm(stack: Devstack, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(stack.bins.helm), "--kubeconfig", str(stack.kubeconfig), *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )
    if proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    work = tmp_path_factory.mktemp("helm-e2e")
    stack = Devstack.up(work / "stack", entrypoints={IMAGE_PREFIX: "filescan"})
    try:
        with ClamdProcess.start(work / "clamd") as clamd:
            comm100_token = "c100-" + secrets.token_urlsafe(24)
            webhook_token = "wh-" + secrets.token_urlsafe(24)
            with Comm100Simulator(token=comm100_token) as sim:
                namespace = f"fscan-e2e-{uuid.uuid4().hex[:6]}"
                stack.kubectl("create", "namespace", namespace)
                # Every pod the chart (and the operator) creates must pass `restricted`, or it is refused.
                stack.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
                wait_for(
                    lambda: stack.kubectl("get", "sa", "default", "-n", namespace, check=False).returncode == 0,
                    timeout=30, what="the default ServiceAccount",
                )
                webhook_port, health_port, metrics_port = free_port(), free_port(), free_port()
                values = {
                    "comm100": {"baseUrl": sim.url, "token": comm100_token},
                    "webhook": {"tokens": [webhook_token], "port": webhook_port},
                    "operator": {"healthPort": health_port, "metricsPort": metrics_port},
                    "clamd": {"externalAddress": clamd.address},
                }
                values_file = work / "local-values.yaml"
                values_file.write_text(yaml.safe_dump(values))
                helm(stack, "install", RELEASE, str(CHART), "-n", namespace,
                     "-f", str(CHART / "devstack-values.yaml"), "-f", str(values_file))
                inst = Installed(stack, namespace, f"http://127.0.0.1:{webhook_port}", webhook_token, sim,
                                 values_file)

                def webhook_healthy() -> bool:
                    try:
                        return httpx.get(f"{inst.webhook_url}/readyz", timeout=2).status_code == 200
                    except httpx.TransportError:
                        return False

                try:
                    wait_for(webhook_healthy, timeout=90, what="the chart's webhook pod to answer /readyz")
                    yield inst
                except BaseException:
                    print(inst.pod_logs("webhook"), inst.pod_logs("operator"), sep="\n")
                    raise
                finally:
                    # The release's pods end here, before clamd and the simulator go away.
                    helm(stack, "uninstall", RELEASE, "-n", namespace, "--ignore-not-found",
                         "--wait", "--timeout", "60s", timeout=90)
    finally:
        stack.down()


def post(inst: Installed, source: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{inst.webhook_url}/webhooks/{source}", params={"token": inst.webhook_token}, json=body, timeout=30
    )


def test_chart_pods_run_with_their_own_service_accounts(installed: Installed) -> None:
    pods = json.loads(installed.stack.kubectl("get", "pods", "-n", installed.namespace, "-o", "json").stdout)
    accounts = {
        p["metadata"]["labels"]["app.kubernetes.io/component"]: p["spec"]["serviceAccountName"]
        for p in pods["items"]
        if p["metadata"]["labels"].get("app.kubernetes.io/instance") == RELEASE
    }
    assert accounts == {"webhook": "filescan-operator-webhook", "operator": "filescan-operator-operator"}


def test_webhook_refuses_a_post_without_the_token(installed: Installed) -> None:
    response = httpx.post(f"{installed.webhook_url}/webhooks/ticket", json=event_body("ticket"), timeout=30)
    assert response.status_code == 401


def test_clean_and_infected_uploads_end_as_the_right_comm100_calls(installed: Installed) -> None:
    sim = installed.sim
    clean_guid, infected_guid = str(uuid.uuid4()), str(uuid.uuid4())
    clean = b"%PDF-1.7 an ordinary attachment\n" * 64
    clean_url = sim.add_file(f"{clean_guid}.pdf", clean)
    infected_url = sim.add_file(f"{infected_guid}.txt", eicar())

    answers = [
        post(installed, "ticket", event_body("ticket", guid=clean_guid, fileURL=clean_url, fileSize=len(clean))),
        post(installed, "livechat", event_body(
            "livechat", nested=True, guid=infected_guid,
            payload={"fileURL": infected_url, "fileSize": len(eicar()), "fileName": "eicar.txt",
                     "fileExtension": "txt"},
        )),
    ]
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    assert [a.json()["result"] for a in answers] == ["delay", "delay"]

    def reported() -> dict[str, Any] | None:
        puts = {c.guid.lower(): c for c in sim.calls(method="PUT") if c.status == 200}
        return puts if {clean_guid, infected_guid} <= puts.keys() else None

    try:
        puts = wait_for(reported, timeout=120, what="both verdicts PUT to the Comm100 simulator", interval=0.5)
    except AssertionError:
        print(installed.pod_logs("operator"))
        raise
    assert puts[clean_guid].source == "ticket"
    assert puts[clean_guid].body == {"status": "available"}
    assert puts[infected_guid].source == "livechat"
    assert puts[infected_guid].body == {"status": "unavailable"}
    assert all(c.auth_ok for c in sim.calls())

    def done() -> dict[str, dict[str, Any]] | None:
        scans = installed.filescans()
        names = {f"ticket-{clean_guid}", f"livechat-{infected_guid}"}
        if names <= scans.keys() and all(scans[n].get("status", {}).get("phase") == "Done" for n in names):
            return scans
        return None

    scans = wait_for(done, timeout=60, what="both FileScans Done", interval=0.5)
    assert scans[f"ticket-{clean_guid}"]["status"]["verdict"] == "clean"
    assert scans[f"livechat-{infected_guid}"]["status"]["verdict"] == "infected"
    assert scans[f"livechat-{infected_guid}"]["status"]["signature"].startswith("Eicar-Test-Signature")

    # What a user reads: the printer columns of `kubectl get filescans`.
    table = installed.stack.kubectl("get", "filescans", "-n", installed.namespace).stdout
    rows = {line.split()[0]: line.split() for line in table.splitlines()[1:]}
    assert {"Done", "clean"} <= set(rows[f"ticket-{clean_guid}"])
    assert {"Done", "infected"} <= set(rows[f"livechat-{infected_guid}"])


def test_the_chart_rbac_is_enough(installed: Installed) -> None:
    """kopf logs and carries on when a permission is missing; the logs must show no refusal at all."""
    logs = installed.pod_logs("operator") + installed.pod_logs("webhook")
    assert "(no logs" not in logs
    for refusal in ("forbidden", "not enough permissions", " 403"):
        assert refusal not in logs.lower(), logs


def test_scan_jobs_ran_in_the_restricted_namespace_without_a_token(installed: Installed) -> None:
    jobs = json.loads(installed.stack.kubectl("get", "jobs", "-n", installed.namespace, "-o", "json").stdout)
    assert jobs["items"], "the operator created no scan Job"
    for job in jobs["items"]:
        pod = job["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert pod["containers"][0]["image"].startswith(IMAGE_PREFIX)


def test_uninstall_keeps_the_crd_and_the_filescans(installed: Installed) -> None:
    """Runs last in the module: it uninstalls the release (the fixture's own uninstall then finds none)."""
    before = set(installed.filescans())
    assert before, "no FileScans to keep"
    result = installed.helm("uninstall", RELEASE, "-n", installed.namespace, "--wait", "--timeout", "60s")
    assert "kept due to the resource policy" in result.stdout + result.stderr
    installed.stack.kubectl("get", "crd", "filescans.comm100.io")
    assert set(installed.filescans()) == before
    left = installed.stack.kubectl(
        "get", "deployments,secrets,configmaps,roles,rolebindings,serviceaccounts,kopfpeerings",
        "-n", installed.namespace, "-l", f"app.kubernetes.io/instance={RELEASE}", "-o", "name",
    ).stdout
    assert left.strip() == ""
