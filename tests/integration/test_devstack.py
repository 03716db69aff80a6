"""The local control plane behaves as a real cluster does for everything the operator relies on."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack.build import KUBERNETES_VERSION
from devstack.cluster import Devstack
from tests.fixtures.cluster import kube_json
from tests.fixtures.waiting import wait_for


def apply(cluster: Devstack, namespace: str, manifest: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(manifest))


def job(name: str, script: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            **spec,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "containers": [{"name": "main", "image": "local", "command": ["sh", "-c", script]}],
                }
            },
        },
    }


def job_condition(cluster: Devstack, namespace: str, name: str) -> dict[str, Any] | None:
    conditions = kube_json(cluster, "get", "job", name, "-n", namespace).get("status", {}).get("conditions", [])
    for condition in conditions:
        if condition["type"] in ("Complete", "Failed") and condition["status"] == "True":
            return dict(condition)
    return None


def pods_of(cluster: Devstack, namespace: str, job_name: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = kube_json(cluster, "get", "pods", "-n", namespace, "-l", f"job-name={job_name}")[
        "items"
    ]
    return items


def test_server_reports_the_built_version_and_kubectl_of_that_minor_talks_to_it(cluster: Devstack) -> None:
    status, body = cluster.get("/version")
    assert status == 200
    assert json.loads(body)["gitVersion"] == KUBERNETES_VERSION

    versions = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert versions["serverVersion"]["gitVersion"] == KUBERNETES_VERSION
    client_minor = versions["clientVersion"]["minor"]
    assert client_minor == versions["serverVersion"]["minor"]
    assert re.fullmatch(r"v\d+\.\d+\.\d+", versions["clientVersion"]["gitVersion"])


def test_job_completes_and_pod_carries_the_exact_termination_message(cluster: Devstack, namespace: str) -> None:
    message = '{"verdict": "clean", "note": "written by the container"}'
    apply(cluster, namespace, job("writes-message", f"printf '%s' '{message}' > /dev/termination-log"))

    condition = wait_for(lambda: job_condition(cluster, namespace, "writes-message"), timeout=60,
                         what="the Job to finish")
    assert condition["type"] == "Complete"
    [pod] = pods_of(cluster, namespace, "writes-message")
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 0
    assert terminated["message"] == message


def test_pod_failure_policy_fails_the_job_at_once_on_exit_code_3(cluster: Devstack, namespace: str) -> None:
    policy = {"rules": [{"action": "FailJob", "onExitCodes": {"operator": "In", "values": [3]}}]}
    apply(cluster, namespace, job("permanent", "exit 3", backoffLimit=4, podFailurePolicy=policy))

    condition = wait_for(lambda: job_condition(cluster, namespace, "permanent"), timeout=60,
                         what="the Job to fail")
    assert condition["type"] == "Failed"
    assert condition["reason"] == "PodFailurePolicy"
    assert len(pods_of(cluster, namespace, "permanent")) == 1


def test_backoff_limit_one_runs_two_pods_then_fails(cluster: Devstack, namespace: str) -> None:
    apply(cluster, namespace, job("flaky", "exit 1", backoffLimit=1))

    condition = wait_for(lambda: job_condition(cluster, namespace, "flaky"), timeout=120,
                         what="the Job to fail after its retry")
    assert condition["type"] == "Failed"
    assert condition["reason"] == "BackoffLimitExceeded"
    pods = pods_of(cluster, namespace, "flaky")
    assert len(pods) == 2
    assert all(p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 1 for p in pods)


def test_deleting_the_owner_garbage_collects_the_job_and_its_pods(cluster: Devstack, namespace: str) -> None:
    cluster.kubectl("create", "configmap", "owner", "-n", namespace)
    owner = kube_json(cluster, "get", "configmap", "owner", "-n", namespace)
    manifest = job("owned", "sleep 300")
    manifest["metadata"]["ownerReferences"] = [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
    ]
    apply(cluster, namespace, manifest)
    wait_for(
        lambda: [p for p in pods_of(cluster, namespace, "owned") if p["status"].get("phase") == "Running"],
        timeout=60, what="the owned Job's pod to run",
    )

    cluster.kubectl("delete", "configmap", "owner", "-n", namespace)

    wait_for(
        lambda: cluster.kubectl("get", "job", "owned", "-n", namespace, check=False).returncode != 0,
        timeout=60, what="the Job to be garbage-collected",
    )
    wait_for(lambda: not pods_of(cluster, namespace, "owned"), timeout=60,
             what="the Job's pods to be garbage-collected")


RESTRICTED_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def test_pod_security_restricted_rejects_a_privileged_pod_and_admits_a_compliant_one(
    cluster: Devstack, namespace: str
) -> None:
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")

    def pod(name: str, security: dict[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {
                "automountServiceAccountToken": False,
                "restartPolicy": "Never",
                "containers": [
                    {"name": "main", "image": "local", "command": ["true"], "securityContext": security}
                ],
            },
        }

    refused = cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", check=False,
        input=yaml.safe_dump(pod("runs-as-root", {"allowPrivilegeEscalation": True})),
    )
    assert refused.returncode != 0
    assert "violates PodSecurity" in refused.stderr and "restricted" in refused.stderr

    apply(cluster, namespace, pod("compliant", RESTRICTED_SECURITY))
    assert kube_json(cluster, "get", "pod", "compliant", "-n", namespace)["metadata"]["name"] == "compliant"


def test_down_leaves_no_process_of_the_stack_running(tmp_path: Path) -> None:
    stack_dir = tmp_path / "stack"
    up = subprocess.run(
        [sys.executable, "-m", "devstack", "up", "--dir", str(stack_dir)],
        capture_output=True, text=True, timeout=180, check=False,
    )
    assert up.returncode == 0, up.stderr
    assert f"export KUBECONFIG={stack_dir.resolve()}/kubeconfig" in up.stdout
    stack = Devstack.load(stack_dir)
    assert all(stack.running().values())
    pids = dict(stack.pids)

    down = subprocess.run(
        [sys.executable, "-m", "devstack", "down", "--dir", str(stack_dir)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert down.returncode == 0, down.stderr
    alive = [name for name, pid in pids.items() if Path(f"/proc/{pid}").exists()
             and b"zombie" not in Path(f"/proc/{pid}/status").read_bytes().lower()]
    assert alive == []
    leftovers = subprocess.run(["pgrep", "-f", str(stack_dir.resolve())], capture_output=True, text=True,
                               check=False)
    assert leftovers.stdout.strip() == ""


@pytest.mark.parametrize("component", ["kube-apiserver"])
def test_a_stopped_component_restarts_on_the_same_port(cluster: Devstack, component: str) -> None:
    port = cluster.ports["apiserver"]
    cluster.stop_process(component)
    assert not cluster.running()[component]
    cluster.start_process(component)
    assert cluster.ports["apiserver"] == port
    assert cluster.get("/readyz")[0] == 200
