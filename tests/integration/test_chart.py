"""Every render of the chart, and the plain bundle, accepted by a real apiserver: ``kubectl apply
--dry-run=server`` in a namespace that enforces (and warns on) the ``restricted`` Pod Security Standard.

The dry run goes through the apiserver's schema validation, the CRDs' OpenAPI schemas and admission
(PodSecurity included), without creating anything. PodSecurity rejects bad Pods but only warns about
bad pod templates (Deployments), so a warning fails the test too. The CRDs are applied for real first
(the KopfPeering object needs its kind served), and a stub ServiceMonitor CRD stands in for the
Prometheus Operator's.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from devstack.cluster import Devstack
from tests.fixtures.waiting import wait_for

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "filescan-operator"
SCENARIOS = sorted((CHART / "ci").glob("*-values.yaml"))
BUNDLE = REPO / "manifests" / "install.yaml"
SERVICE_MONITOR_STUB = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
    "spec": {
        "group": "monitoring.coreos.com",
        "scope": "Namespaced",
        "names": {"kind": "ServiceMonitor", "plural": "servicemonitors", "singular": "servicemonitor"},
        "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
            "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}],
    },
}


@pytest.fixture(scope="module")
def restricted_namespace(cluster: Devstack) -> Iterator[str]:
    name = f"chart-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    cluster.kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted",
                    "pod-security.kubernetes.io/warn=restricted")
    wait_for(lambda: cluster.kubectl("get", "sa", "default", "-n", name, check=False).returncode == 0,
             timeout=30, what=f"the default ServiceAccount in {name}")
    for path in (CHART / "crds" / "kopfpeerings.kopf.dev.yaml", REPO / "manifests" / "crd-filescans.yaml"):
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
    cluster.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(SERVICE_MONITOR_STUB))
    for crd in ("kopfpeerings.kopf.dev", "filescans.comm100.io", "servicemonitors.monitoring.coreos.com"):
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")
    wait_for(lambda: cluster.kubectl("get", "kopfpeerings,servicemonitors", "-n", name, check=False).returncode == 0,
             timeout=30, what="the peering and ServiceMonitor kinds to be discoverable")
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def helm_template(cluster: Devstack, namespace: str, *args: str) -> str:
    proc = subprocess.run(
        [str(cluster.bins.helm), "template", "filescan-operator", str(CHART), "-n", namespace,
         "--kube-version", "1.37.2", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def dry_run(cluster: Devstack, namespace: str, manifests: str) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl("apply", "--server-side", "--force-conflicts", "--dry-run=server", "-n", namespace,
                           "-f", "-", input=manifests, check=False)


def assert_accepted(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stderr
    assert "would violate PodSecurity" not in result.stderr, result.stderr
    assert "Warning" not in result.stderr, result.stderr


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: p.name)
def test_scenario_is_accepted_by_the_apiserver(cluster: Devstack, restricted_namespace: str, scenario: Path) -> None:
    rendered = helm_template(cluster, restricted_namespace, "-f", str(scenario))
    result = dry_run(cluster, restricted_namespace, rendered)
    assert_accepted(result)
    kinds = {doc["kind"] for doc in yaml.safe_load_all(rendered) if doc}
    # Each kind is reported back as dry-run-applied.
    assert result.stdout.count("(server dry run)") == len([d for d in yaml.safe_load_all(rendered) if d])
    assert {"Deployment", "Role", "NetworkPolicy"} <= kinds


def test_the_bundle_is_accepted_by_the_apiserver(cluster: Devstack, restricted_namespace: str) -> None:
    bundle = BUNDLE.read_text().replace("namespace: filescan\n", f"namespace: {restricted_namespace}\n")
    assert_accepted(dry_run(cluster, restricted_namespace, bundle))


def test_the_namespace_really_refuses_what_is_not_restricted(cluster: Devstack, restricted_namespace: str) -> None:
    """The control for the tests above: this namespace does refuse and warn."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "privileged"},
           "spec": {"containers": [{"name": "c", "image": "busybox", "securityContext": {"privileged": True}}]}}
    result = dry_run(cluster, restricted_namespace, json.dumps(pod))
    assert result.returncode != 0
    assert "violates PodSecurity" in result.stderr
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "privileged"},
                  "spec": {"selector": {"matchLabels": {"a": "b"}},
                           "template": {"metadata": {"labels": {"a": "b"}}, "spec": pod["spec"]}}}
    assert "would violate PodSecurity" in dry_run(cluster, restricted_namespace, json.dumps(deployment)).stderr
