"""The Helm chart, the bundle and the Dockerfile, checked without a cluster: lint, render, refuse invalid
values, keep the single-source CRD identical, keep generated files fresh, and the static security scans
(hadolint, checkov) with their explained skip lists (.hadolint.yaml, .checkov.yaml).

The server-side checks (every render applied with ``--dry-run=server`` in a namespace that enforces
``restricted``) are in tests/integration/test_chart.py; the install itself in tests/e2e/test_helm.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack.build import ensure_binaries
from scripts import build_helm4, pin_requirements, render_bundle, values_reference

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "filescan-operator"
CRD_SOURCE = REPO / "manifests" / "crd-filescans.yaml"
SCENARIOS = sorted((CHART / "ci").glob("*-values.yaml"))
KUBE_VERSION = "1.37.2"
CHECKOV = REPO / ".venv" / "tools" / "checkov" / "bin" / "checkov"
HADOLINT = Path(sys.executable).parent / "hadolint"


@pytest.fixture(scope="module")
def helm() -> Path:
    return ensure_binaries().helm


def run_helm(helm: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=120, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stderr}")
    return proc


def render(helm: Path, *values: str, values_file: Path | None = None) -> list[dict[str, Any]]:
    args = ["template", "filescan-operator", str(CHART), "-n", "filescan", "--kube-version", KUBE_VERSION]
    args += ["-f", str(values_file or CHART / "ci" / "minimal-values.yaml")]
    for value in values:
        args += ["--set", value]
    return [doc for doc in yaml.safe_load_all(run_helm(helm, *args).stdout) if doc]


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found in {[d['metadata']['name'] for d in docs]}"
    return matches[0]


# -- lint and render ------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: p.name)
def test_lint_strict(helm: Path, scenario: Path) -> None:
    proc = run_helm(helm, "lint", "--strict", str(CHART), "-f", str(scenario), check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[ERROR]" not in proc.stdout and "[WARNING]" not in proc.stdout, proc.stdout


def test_defaults_alone_refuse_to_render_and_say_what_to_set(helm: Path) -> None:
    proc = run_helm(helm, "template", "x", str(CHART), "--kube-version", KUBE_VERSION, check=False)
    assert proc.returncode != 0
    assert "comm100.token (or comm100.existingSecret) is required" in proc.stderr


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["comm100.token=", "comm100.existingSecret="], "comm100.token (or comm100.existingSecret) is required"),
        (["comm100.existingSecret=mine"], "set comm100.token or comm100.existingSecret, not both"),
        (["webhook.tokens=null"], "webhook.tokens (or webhook.existingSecret) is required"),
        (["webhook.existingSecret=mine"], "set webhook.tokens or webhook.existingSecret, not both"),
        (["webhook.tokens={changeme}"], "/webhook/tokens/0': minLength"),
        (["webhook.tokens[0]=abcdefghijklmnop\\,qrstuvwxyz"], "cannot contain a comma"),
        (["fetch.allowedFileHosts=null"], "fetch.allowedFileHosts is required"),
        (["clamd.enabled=false"], "set clamd.externalAddress"),
        (["clamd.externalAddress=tcp://clamd:3310"], "only used with clamd.enabled=false"),
        (["scan.engine=clamscan"], "scan.engine=clamscan does not use clamd"),
        (["operator.peering.enabled=false", "operator.standby.enabled=true"], "operator.standby needs"),
        (["operator.standby.enabled=true", "operator.standby.priority=100"], "must be lower than"),
        (["clamd.database.persistence.enabled=true", "clamd.replicaCount=2"], "one clamd replica only"),
        (["clamd.freshclam.enabled=false"], "needs clamd.database.persistence"),
        (["webhook.podDisruptionBudget.enabled=true", "webhook.podDisruptionBudget.minAvailable=1",
          "webhook.podDisruptionBudget.maxUnavailable=1"], "not both"),
        (["webhook.ingress.enabled=true"], "needs at least one webhook.ingress.hosts"),
        (["clamd.enabled=false", "clamd.externalAddress=tcp://c:3310"], "set networkPolicy.externalClamd.peers"),
        # The strict schema: a typo fails instead of being ignored.
        (["webhook.replicas=3"], "additional properties 'replicas' not allowed"),
        (["scan.engine=clamav"], "scan/engine"),
    ],
)
def test_invalid_values_fail_with_a_clear_message(helm: Path, values: list[str], message: str) -> None:
    args = ["template", "x", str(CHART), "--kube-version", KUBE_VERSION]
    args += ["-f", str(CHART / "ci" / "minimal-values.yaml")]
    for value in values:
        args += ["--set", value]
    proc = run_helm(helm, *args, check=False)
    assert proc.returncode != 0, f"{values} rendered"
    assert message in proc.stderr, proc.stderr


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: p.name)
def test_every_pod_is_hardened(helm: Path, scenario: Path) -> None:
    """What `restricted` asks, checked statically too (the devstack does not enforce securityContext)."""
    pods = [d["spec"]["template"]["spec"] for d in render(helm, values_file=scenario) if d["kind"] == "Deployment"]
    assert pods
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod["containers"] + pod.get("initContainers", []):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert container["resources"]["requests"], container["name"]
            assert container["resources"]["limits"]["memory"], container["name"]


def test_settings_reach_the_processes_as_filescan_variables(helm: Path) -> None:
    docs = render(helm, "scan.nodeSelector.pool=scan", "policy.blockedExtensions={exe,js}",
                  "clamd.enabled=false", "clamd.externalAddress=tcp://clamd.sec:3310",
                  "networkPolicy.externalClamd.peers[0].ipBlock.cidr=10.1.2.3/32")
    settings = find(docs, "ConfigMap", "filescan-operator-settings")["data"]
    assert settings["FILESCAN_NAMESPACE"] == "filescan"
    assert settings["FILESCAN_ALLOWED_FILE_HOSTS"] == "files.comm100.io"
    assert settings["FILESCAN_MAX_FILE_SIZE"] == "104857600"
    assert json.loads(settings["FILESCAN_SCAN_NODE_SELECTOR"]) == {"pool": "scan"}
    assert settings["FILESCAN_BLOCKED_EXTENSIONS"] == "exe,js"
    assert settings["FILESCAN_CLAMD_ADDRESS"] == "tcp://clamd.sec:3310"
    assert settings["FILESCAN_SCAN_IMAGE"] == "ghcr.io/comm100/filescan-operator:0.1.0"
    # Every key is one controller/settings.py reads.
    from controller import settings as module

    fields = {
        f"FILESCAN_{name.upper()}"
        for group in (module.FetchPolicy, module.WebhookSettings, module.ScannerSettings, module.ScanJobSettings,
                      module.PolicySettings, module.Comm100Settings, module.OperatorSettings)
        for name in group.model_fields
    }
    assert set(settings) <= fields, set(settings) - fields
    operator = find(docs, "Deployment", "filescan-operator-operator")["spec"]["template"]["spec"]
    env = {e["name"]: e for e in operator["containers"][0]["env"]}
    assert env["FILESCAN_COMM100_TOKEN_FILE"]["value"] == "/var/run/secrets/filescan/comm100/token"
    webhook = find(docs, "Deployment", "filescan-operator-webhook")["spec"]["template"]["spec"]
    tokens = {e["name"]: e for e in webhook["containers"][0]["env"]}["FILESCAN_WEBHOOK_TOKENS_FILE"]
    assert tokens["value"] == "/var/run/secrets/filescan/webhook/tokens"  # a file: rotates without a restart
    [volume] = [v for v in webhook["volumes"] if v["name"] == "webhook-tokens"]
    assert volume["secret"]["secretName"] == "filescan-operator-webhook-tokens"
    assert volume["secret"]["items"] == [{"key": "tokens", "path": "tokens"}]
    assert not any("secretKeyRef" in e.get("valueFrom", {}) for e in webhook["containers"][0]["env"])


def test_rbac_is_least_privilege(helm: Path) -> None:
    docs = render(helm)
    webhook = find(docs, "Role", "filescan-operator-webhook")
    assert webhook["rules"] == [{"apiGroups": ["comm100.io"], "resources": ["filescans"],
                                 "verbs": ["create", "get", "watch"]}]
    cluster_roles = [d for d in docs if d["kind"] == "ClusterRole"]
    assert len(cluster_roles) == 1
    for rule in cluster_roles[0]["rules"]:
        assert set(rule["verbs"]) <= {"list", "watch"}
    operator = find(docs, "Role", "filescan-operator-operator")
    granted = {(g, r, v) for rule in operator["rules"] for g in rule["apiGroups"] for r in rule["resources"]
               for v in rule["verbs"]}
    assert ("batch", "jobs", "delete") not in granted
    assert not any(r == "secrets" for _, r, _ in granted)
    for deployment in (d for d in docs if d["kind"] == "Deployment" and "clamd" in d["metadata"]["name"]):
        assert deployment["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_network_policy_confines_scan_pods(helm: Path) -> None:
    policy = find(render(helm), "NetworkPolicy", "filescan-operator-scan")
    # The labels controller/builders.py puts on scan pods.
    from controller.builders import APP_LABELS

    assert policy["spec"]["podSelector"]["matchLabels"].items() <= APP_LABELS.items()
    assert policy["spec"]["ingress"] == []
    egress = policy["spec"]["egress"]
    assert [sorted(p["port"] for p in rule["ports"]) for rule in egress] == [[53, 53], [443], [3310]]
    assert "169.254.0.0/16" in egress[1]["to"][0]["ipBlock"]["except"]


# -- single sources and generated files -------------------------------------------------------------


def _without_keep(crd: dict[str, Any]) -> dict[str, Any]:
    crd = json.loads(json.dumps(crd))
    annotations = crd["metadata"].pop("annotations")
    assert annotations == {"helm.sh/resource-policy": "keep"}
    return crd


def test_the_chart_renders_the_one_crd_source(helm: Path) -> None:
    rendered = find(render(helm), "CustomResourceDefinition", "filescans.comm100.io")
    assert _without_keep(rendered) == yaml.safe_load(CRD_SOURCE.read_text())
    assert not any(d["kind"] == "CustomResourceDefinition" for d in render(helm, "crds.enabled=false"))
    kept = find(render(helm, "crds.keep=false"), "CustomResourceDefinition", "filescans.comm100.io")
    assert "annotations" not in kept["metadata"]


def test_the_packaged_chart_carries_the_crd_source(helm: Path, tmp_path: Path) -> None:
    """`helm package` resolves the symlink: the archive holds the file, not a dangling link."""
    run_helm(helm, "package", str(CHART), "-d", str(tmp_path))
    (archive,) = tmp_path.glob("filescan-operator-*.tgz")
    with tarfile.open(archive) as tar:
        member = tar.getmember("filescan-operator/files/crd-filescans.yaml")
        assert member.isfile()
        extracted = tar.extractfile(member)
        assert extracted is not None
        assert extracted.read() == CRD_SOURCE.read_bytes()
        names = tar.getnames()
    assert "filescan-operator/devstack-values.yaml" not in names


def test_install_bundle_is_up_to_date(helm: Path) -> None:
    assert render_bundle.TARGET.read_text() == render_bundle.render(helm), "run `make manifests`"


def test_requirements_txt_pins_what_the_tests_ran_against() -> None:
    assert pin_requirements.TARGET.read_text() == pin_requirements.render(), "run `make requirements`"


def test_values_are_all_documented_and_in_the_schema() -> None:
    text = (CHART / "values.yaml").read_text()
    entries = values_reference.parse(text)
    assert values_reference.undocumented(entries) == []
    schema = json.loads((CHART / "values.schema.json").read_text())
    declared: set[str] = set()
    strict_objects = {""}

    def walk(node: dict[str, Any], prefix: str) -> None:
        assert node.get("additionalProperties") is False, f"{prefix or 'the root'} is not strict"
        for key, sub in node["properties"].items():
            declared.add(prefix + key)
            if sub.get("type") == "object" and "properties" in sub:
                strict_objects.add(prefix + key)
                walk(sub, f"{prefix}{key}.")

    walk(schema, "")
    in_values = {e.path for e in entries}
    # Every schema key has a default in values.yaml ("global" is Helm's, for subcharts) ...
    assert declared - {"global"} <= in_values, declared - in_values
    # ... and every values.yaml key inside a strict object is declared (keys inside a free-form
    # Kubernetes object, e.g. resources.requests.cpu, belong to that object).
    undeclared = {p for p in in_values if (p.rsplit(".", 1)[0] if "." in p else "") in strict_objects} - declared
    assert undeclared == set()


def test_readme_configuration_reference_is_up_to_date() -> None:
    readme = values_reference.README.read_text()
    table = values_reference.render(values_reference.parse(values_reference.VALUES.read_text()))
    assert values_reference.updated_readme(readme, table) == readme, "run `make docs`"


# -- helm 4 -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: p.name)
def test_helm4_renders_what_helm3_renders(helm: Path, scenario: Path) -> None:
    helm4 = build_helm4.helm4_path()
    assert helm4.exists(), f"{helm4} missing: run `make helm4`"
    args = ["template", "filescan-operator", str(CHART), "-n", "filescan", "--kube-version", KUBE_VERSION,
            "-f", str(scenario)]
    three = [d for d in yaml.safe_load_all(run_helm(helm, *args).stdout) if d]
    four = [d for d in yaml.safe_load_all(run_helm(helm4, *args).stdout) if d]
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    assert sorted(three, key=key) == sorted(four, key=key)
    assert run_helm(helm4, "lint", "--strict", str(CHART), "-f", str(scenario)).returncode == 0


# -- static security scans ------------------------------------------------------------------------------


def test_hadolint_passes_and_would_catch_a_bad_dockerfile(tmp_path: Path) -> None:
    config = ["--config", str(REPO / ".hadolint.yaml")]
    clean = subprocess.run([str(HADOLINT), *config, str(REPO / "Dockerfile")], capture_output=True, text=True,
                           check=False)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\n")
    caught = subprocess.run([str(HADOLINT), *config, str(bad)], capture_output=True, text=True, check=False)
    assert caught.returncode != 0 and "DL3007" in caught.stdout, caught.stdout


def test_checkov_finds_nothing_unexplained(helm: Path, tmp_path: Path) -> None:
    assert CHECKOV.exists(), f"{CHECKOV} missing: run `make security-tools`"
    rendered = tmp_path / "rendered"
    rendered.mkdir()
    for scenario in SCENARIOS:
        args = ["template", "filescan-operator", str(CHART), "-n", "filescan", "--kube-version", KUBE_VERSION,
                "-f", str(scenario)]
        (rendered / scenario.name).write_text(run_helm(helm, *args).stdout)
    (rendered / "install.yaml").write_text(render_bundle.TARGET.read_text())
    config = ["--config-file", str(REPO / ".checkov.yaml"), "-o", "json"]
    for target in (["-d", str(rendered), "--framework", "kubernetes"],
                   ["-f", str(REPO / "Dockerfile"), "--framework", "dockerfile"]):
        proc = subprocess.run([str(CHECKOV), *config, *target], capture_output=True, text=True, timeout=300,
                              check=False, cwd=REPO)
        reports = json.loads(proc.stdout)
        reports = reports if isinstance(reports, list) else [reports]
        passed = sum(r["summary"]["passed"] for r in reports)
        failed = [(c["check_id"], c["resource"]) for r in reports for c in r["results"]["failed_checks"]]
        assert passed > 50, proc.stdout[:2000]  # it really scanned
        assert failed == [], failed
