"""The pure builders: the scan Job for one attempt, the owner reference, and status conditions."""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import pytest

from controller.builders import (
    APP_LABELS,
    ATTEMPT_LABEL,
    FILESCAN_LABEL,
    KUEUE_QUEUE_LABEL,
    build_scan_job,
    format_time,
    job_name,
    owner_reference,
    with_condition,
)
from controller.scanconfig import FetchRules, ScannerConfig, read_scanner_env
from controller.settings import FetchPolicy, ScanJobSettings, ScannerSettings

DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
GUID = "12b76589-6ba7-4011-aa23-8779594aab11"
NAME = f"ticket-{GUID}"
URL = "https://files.comm100.test/attachments/x?sig=abc&b=1"
T0 = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)


def filescan(name: str = NAME, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "comm100.io/v1alpha1",
        "kind": "FileScan",
        "metadata": {"name": name, "namespace": "scans", "uid": "0b7c-uid", "generation": 1},
        "spec": {"source": "ticket", "guid": GUID.upper(), "fileName": "a.pdf", "fileSize": 12345,
                 "fileURL": URL, **spec},
    }


def build(
    fs: dict[str, Any] | None = None,
    attempt: int = 1,
    job: ScanJobSettings | None = None,
    scanner: ScannerSettings | None = None,
    fetch: FetchPolicy | None = None,
) -> dict[str, Any]:
    return build_scan_job(
        fs or filescan(), attempt, job or ScanJobSettings(), scanner or ScannerSettings(),
        fetch or FetchPolicy(allowed_file_hosts=["files.comm100.test"]),
    )


def pod_spec(job: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = job["spec"]["template"]["spec"]
    return spec


def container(job: dict[str, Any]) -> dict[str, Any]:
    containers = pod_spec(job)["containers"]
    assert len(containers) == 1
    found: dict[str, Any] = containers[0]
    return found


def env(job: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container(job)["env"]}


# ---- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filescan_name", "attempt", "expected"),
    [
        (NAME, 1, f"{NAME}-a1"),
        (NAME, 3, f"{NAME}-a3"),
        ("livechat-x", 12, "livechat-x-a12"),
        ("a" * 60, 1, "a" * 60 + "-a1"),  # exactly 63: kept as is
    ],
)
def test_job_name_is_the_filescan_and_the_attempt(filescan_name: str, attempt: int, expected: str) -> None:
    assert job_name(filescan_name, attempt) == expected


@pytest.mark.parametrize("length", [61, 62, 64, 100, 253])
@pytest.mark.parametrize("attempt", [1, 9, 10, 999])
def test_long_job_names_are_hashed_to_63(length: int, attempt: int) -> None:
    name = ("x" * (length - 5)) + "-tail"
    short = job_name(name, attempt)
    assert len(short) <= 63
    assert short.endswith(f"-a{attempt}")
    assert DNS1123_LABEL.fullmatch(short), short
    if len(name) + len(f"-a{attempt}") > 63:
        assert short != (name + f"-a{attempt}")[:63], "a long name is hashed, not merely cut"
    assert job_name(name, attempt) == short, "deterministic"


def test_long_names_differing_only_at_the_end_stay_distinct() -> None:
    base = "ticket-" + "a" * 70
    assert job_name(base + "1", 1) != job_name(base + "2", 1)


@pytest.mark.parametrize("name", [NAME, "y" * 120])
def test_job_names_differ_per_attempt(name: str) -> None:
    names = {job_name(name, attempt) for attempt in range(1, 21)}
    assert len(names) == 20


def test_the_job_is_named_and_placed_from_the_filescan() -> None:
    job = build(attempt=2)
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    assert job["metadata"]["name"] == f"{NAME}-a2"
    assert job["metadata"]["namespace"] == "scans"


# ---- labels and ownership --------------------------------------------------------------------


@pytest.mark.parametrize("attempt", [1, 4])
def test_labels_on_the_job_and_its_pods(attempt: int) -> None:
    job = build(attempt=attempt)
    expected = dict(APP_LABELS) | {FILESCAN_LABEL: NAME, ATTEMPT_LABEL: str(attempt)}
    assert job["metadata"]["labels"] == expected
    assert job["spec"]["template"]["metadata"]["labels"] == expected
    assert APP_LABELS["app.kubernetes.io/name"] == "filescan-operator"
    assert KUEUE_QUEUE_LABEL not in job["metadata"]["labels"]


def test_pod_labels_are_a_copy_of_the_job_labels() -> None:
    job = build()
    job["metadata"]["labels"]["extra"] = "1"
    assert "extra" not in job["spec"]["template"]["metadata"]["labels"]


def test_the_builder_adds_no_owner_reference() -> None:
    job = build()
    assert "ownerReferences" not in job["metadata"]
    assert "ownerReferences" not in job["spec"]["template"]["metadata"]


def test_owner_reference_points_at_the_filescan_as_controller() -> None:
    assert owner_reference(filescan()) == {
        "apiVersion": "comm100.io/v1alpha1",
        "kind": "FileScan",
        "name": NAME,
        "uid": "0b7c-uid",
        "controller": True,
        "blockOwnerDeletion": True,
    }


# ---- failure handling ------------------------------------------------------------------------


def test_retries_are_the_operators_and_exit_3_fails_at_once() -> None:
    spec = build()["spec"]
    assert spec["backoffLimit"] == 0
    assert pod_spec(build())["restartPolicy"] == "Never"
    rules = spec["podFailurePolicy"]["rules"]
    assert {"action": "FailJob",
            "onExitCodes": {"containerName": "scanner", "operator": "In", "values": [3]}} in rules
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]} in rules
    assert len(rules) == 2
    assert container(build())["name"] == "scanner", "the rule names the container that exists"


# ---- hardening -------------------------------------------------------------------------------


def test_pod_is_hardened() -> None:
    pod = pod_spec(build())
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert isinstance(pod["securityContext"]["runAsUser"], int) and pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    box = container(build())["securityContext"]
    assert box["readOnlyRootFilesystem"] is True
    assert box["allowPrivilegeEscalation"] is False
    assert box["capabilities"] == {"drop": ["ALL"]}
    assert "add" not in box["capabilities"]
    assert box["runAsNonRoot"] is True
    assert "privileged" not in box or box["privileged"] is False
    assert "hostNetwork" not in pod and "hostPID" not in pod


def test_scratch_is_a_size_limited_empty_dir_mounted_as_tmpdir() -> None:
    job = build(job=ScanJobSettings(scan_scratch_size="300Mi"))
    volumes = pod_spec(job)["volumes"]
    assert volumes == [{"name": "scratch", "emptyDir": {"sizeLimit": "300Mi"}}]
    mounts = container(job)["volumeMounts"]
    assert len(mounts) == 1 and mounts[0]["name"] == "scratch"
    assert env(job)["TMPDIR"] == mounts[0]["mountPath"]
    assert not mounts[0].get("readOnly")


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (ScanJobSettings(), {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}}),
        (
            ScanJobSettings(scan_cpu_request="250m", scan_cpu_limit="2", scan_memory_request="128Mi",
                            scan_memory_limit="1Gi"),
            {"requests": {"cpu": "250m", "memory": "128Mi"}, "limits": {"cpu": "2", "memory": "1Gi"}},
        ),
    ],
)
def test_resources_come_from_the_settings(settings: ScanJobSettings, expected: dict[str, Any]) -> None:
    assert container(build(job=settings))["resources"] == expected


@pytest.mark.parametrize(
    ("deadline", "ttl", "expected_deadline", "expected_ttl"),
    [
        (None, None, 600, 3600),  # the defaults: 10 minutes, 1 hour
        ("90s", "2h", 90, 7200),
        ("1h30m", "1d", 5400, 86400),
        ("0", "0", 1, 1),  # at least 1: the apiserver refuses activeDeadlineSeconds 0
    ],
)
def test_deadline_and_ttl_come_from_the_settings(
    deadline: str | None, ttl: str | None, expected_deadline: int, expected_ttl: int
) -> None:
    fields: dict[str, Any] = {
        k: v for k, v in (("scan_active_deadline", deadline), ("scan_ttl_after_finished", ttl)) if v
    }
    spec = build(job=ScanJobSettings(**fields))["spec"]
    assert spec["activeDeadlineSeconds"] == expected_deadline
    assert spec["ttlSecondsAfterFinished"] == expected_ttl


def test_image_and_command_come_from_the_settings() -> None:
    job = build(job=ScanJobSettings(scan_image="registry.local/fs:9", scan_command=["python", "-m", "cli", "scan"]))
    box = container(job)
    assert box["image"] == "registry.local/fs:9"
    assert box["command"] == ["python", "-m", "cli", "scan"]


def test_scan_command_from_the_environment_is_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    # Documented as comma-separated, like every list setting that Helm values fill in.
    monkeypatch.setenv("FILESCAN_SCAN_COMMAND", "python, -m,controller.cli,scan")
    assert container(build(job=ScanJobSettings()))["command"] == ["python", "-m", "controller.cli", "scan"]


# ---- placement -------------------------------------------------------------------------------

PLACEMENT: dict[str, Any] = {
    "scan_node_selector": {"pool": "scan"},
    "scan_tolerations": [{"key": "scan", "operator": "Exists", "effect": "NoSchedule"}],
    "scan_affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "pool", "operator": "In", "values": ["scan"]}]}]}}},
    "scan_priority_class_name": "scan-low",
}
POD_FIELDS = {
    "scan_node_selector": "nodeSelector",
    "scan_tolerations": "tolerations",
    "scan_affinity": "affinity",
    "scan_priority_class_name": "priorityClassName",
}


def test_no_placement_fields_by_default() -> None:
    pod = pod_spec(build())
    for field in POD_FIELDS.values():
        assert field not in pod, field


@pytest.mark.parametrize("setting", sorted(POD_FIELDS))
def test_each_placement_field_appears_only_when_set(setting: str) -> None:
    pod = pod_spec(build(job=ScanJobSettings(**{setting: PLACEMENT[setting]})))
    assert pod[POD_FIELDS[setting]] == PLACEMENT[setting]
    for other, field in POD_FIELDS.items():
        if other != setting:
            assert field not in pod, field


def test_placement_is_copied_not_shared() -> None:
    settings = ScanJobSettings(**copy.deepcopy(PLACEMENT))
    first = pod_spec(build(job=settings))
    first["nodeSelector"]["pool"] = "other"
    first["tolerations"][0]["key"] = "other"
    first["tolerations"].append({"key": "more"})
    first["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"].clear()
    assert settings.scan_node_selector == PLACEMENT["scan_node_selector"]
    assert settings.scan_tolerations == PLACEMENT["scan_tolerations"]
    assert settings.scan_affinity == PLACEMENT["scan_affinity"]
    second = pod_spec(build(job=settings))
    for setting, field in POD_FIELDS.items():
        assert second[field] == PLACEMENT[setting], field


def test_command_is_copied_not_shared() -> None:
    settings = ScanJobSettings()
    container(build(job=settings))["command"].append("--evil")
    assert settings.scan_command == ["filescan", "scan"]


# ---- Kueue -----------------------------------------------------------------------------------


def test_kueue_mode_creates_suspended_jobs_with_the_queue_label() -> None:
    job = build(job=ScanJobSettings(kueue_queue_name="scans-local"))
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "scans-local"
    # The app labels and the FileScan label stay.
    assert job["metadata"]["labels"][FILESCAN_LABEL] == NAME
    assert set(APP_LABELS.items()) <= set(job["metadata"]["labels"].items())


def test_without_kueue_jobs_start_at_once() -> None:
    job = build()
    assert "suspend" not in job["spec"] or job["spec"]["suspend"] is False


# ---- the scanner's program -------------------------------------------------------------------


AS_ENV_GIVES_IT: dict[str, Any] = {"allowed_file_hosts": "a.test, .cdn.test"}


@pytest.mark.parametrize(
    ("scanner", "fetch", "expected"),
    [
        (
            ScannerSettings(),
            FetchPolicy(allowed_file_hosts=["files.comm100.test"]),
            {"FILESCAN_SCAN_ENGINE": "clamd", "FILESCAN_CLAMD_ADDRESS": "tcp://clamd:3310",
             "FILESCAN_ALLOWED_FILE_HOSTS": "files.comm100.test", "FILESCAN_ALLOW_HTTP": "false",
             "FILESCAN_MAX_FILE_SIZE": str(100 * 1024 * 1024), "FILESCAN_FETCH_TIMEOUT_SECONDS": "30.0"},
        ),
        (
            ScannerSettings(scan_engine="clamscan", clamd_address="unix:/run/clamd.sock",
                            clamscan_database=Path("/var/lib/clamav"), fetch_timeout_seconds=12.5),
            FetchPolicy(**AS_ENV_GIVES_IT, allow_http=True, max_file_size=2048),
            {"FILESCAN_SCAN_ENGINE": "clamscan", "FILESCAN_CLAMD_ADDRESS": "unix:/run/clamd.sock",
             "FILESCAN_ALLOWED_FILE_HOSTS": "a.test,.cdn.test", "FILESCAN_ALLOW_HTTP": "true",
             "FILESCAN_MAX_FILE_SIZE": "2048", "FILESCAN_CLAMSCAN_DATABASE": "/var/lib/clamav",
             "FILESCAN_FETCH_TIMEOUT_SECONDS": "12.5"},
        ),
    ],
)
def test_scanner_env_mirrors_the_settings(
    scanner: ScannerSettings, fetch: FetchPolicy, expected: dict[str, str]
) -> None:
    variables = env(build(scanner=scanner, fetch=fetch))
    assert {k: v for k, v in variables.items() if k not in ("TMPDIR", "FILESCAN_SCAN_URL")} == expected


def test_scanner_env_round_trips_through_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The scanner reads its settings from this very env: what it reads is what the operator had."""
    scanner = ScannerSettings(scan_engine="clamscan", clamd_address="tcp://10.0.0.9:3310",
                              clamscan_database=Path("/db"), fetch_timeout_seconds=7.5)
    fetch = FetchPolicy(allowed_file_hosts=["files.comm100.test", ".cdn.comm100.test"], allow_http=True,
                        max_file_size=777)
    for key, value in env(build(scanner=scanner, fetch=fetch)).items():
        monkeypatch.setenv(key, value)
    assert FetchPolicy() == fetch
    assert ScannerSettings() == scanner
    rules, config = read_scanner_env()
    assert rules == FetchRules(("files.comm100.test", ".cdn.comm100.test"), allow_http=True, max_file_size=777)
    assert config == ScannerConfig("clamscan", "tcp://10.0.0.9:3310", Path("/db"), fetch_timeout_seconds=7.5)


@pytest.mark.parametrize("url", [URL, "https://h.test/a b?x=1&y=\u00e9#frag", "https://h.test/" + "p" * 4000])
def test_the_url_travels_in_the_environment_and_the_size_in_args_verbatim(url: str) -> None:
    job = build(filescan(fileURL=url, fileSize=2**63 - 1))
    assert container(job)["args"] == ["--expected-size", str(2**63 - 1)]  # never the URL: argv is public
    assert {"name": "FILESCAN_SCAN_URL", "value": url} in container(job)["env"]


def test_the_manifest_is_plain_json() -> None:
    job = build(job=ScanJobSettings(**PLACEMENT, kueue_queue_name="q"))
    assert json.loads(json.dumps(job)) == job


def test_the_filescan_is_not_modified() -> None:
    fs = filescan()
    before = copy.deepcopy(fs)
    job = build(fs)
    container(job)["args"][1] = "changed"
    assert fs == before


# ---- conditions ------------------------------------------------------------------------------


def cond(kind: str, status: str, when: str = "2025-01-01T00:00:00Z", reason: str = "Before") -> dict[str, Any]:
    return {"type": kind, "status": status, "reason": reason, "message": "m", "lastTransitionTime": when}


def test_a_new_condition_gets_now_as_transition_time() -> None:
    [condition] = with_condition(None, "Scanned", True, "Clean", "clean (ClamAV)", T0)
    assert condition == {"type": "Scanned", "status": "True", "reason": "Clean", "message": "clean (ClamAV)",
                         "lastTransitionTime": "2025-03-01T12:00:00Z"}


@pytest.mark.parametrize(("before", "after"), [(True, True), (False, False)])
def test_same_status_keeps_the_transition_time(before: bool, after: bool) -> None:
    old = [cond("Scanned", "True" if before else "False")]
    [condition] = with_condition(old, "Scanned", after, "Again", "new message", T0)
    assert condition["lastTransitionTime"] == "2025-01-01T00:00:00Z"
    assert condition["reason"] == "Again" and condition["message"] == "new message", "the rest is updated"


@pytest.mark.parametrize(("before", "after"), [(True, False), (False, True)])
def test_a_flip_moves_the_transition_time(before: bool, after: bool) -> None:
    old = [cond("Reported", "True" if before else "False")]
    [condition] = with_condition(old, "Reported", after, "Flip", "m", T0)
    assert condition["status"] == ("True" if after else "False")
    assert condition["lastTransitionTime"] == "2025-03-01T12:00:00Z"


def test_unknown_to_true_is_a_transition() -> None:
    [condition] = with_condition([cond("Ready", "Unknown")], "Ready", True, "Done", "m", T0)
    assert condition["lastTransitionTime"] == format_time(T0)


def test_other_conditions_are_kept_and_not_shared() -> None:
    old = [cond("Scanned", "True", reason="Clean"), cond("Custom", "True", reason="Mine")]
    result = with_condition(old, "Reported", True, "Reported", "ok", T0)
    assert result[0] == old[0]
    assert cond("Custom", "True", reason="Mine") in result
    result[0]["reason"] = "Mutated"
    assert old[0]["reason"] == "Clean", "the input list's dicts are not shared with the output"


def test_conditions_are_ordered_scanned_reported_ready_then_others() -> None:
    conditions: list[dict[str, Any]] = [cond("Other", "True")]
    for kind in ("Ready", "Reported", "Scanned"):
        conditions = with_condition(conditions, kind, True, "R", "m", T0)
    assert [c["type"] for c in conditions] == ["Scanned", "Reported", "Ready", "Other"]
    # Setting one again does not duplicate or reorder it.
    conditions = with_condition(conditions, "Reported", False, "R", "m", T0)
    assert [c["type"] for c in conditions] == ["Scanned", "Reported", "Ready", "Other"]


def test_generation_and_long_messages() -> None:
    [condition] = with_condition(None, "Scanned", False, "Failed", "x" * 10_000, T0, generation=3)
    assert condition["observedGeneration"] == 3
    assert len(condition["message"]) == 4000
    [without] = with_condition(None, "Scanned", False, "Failed", "m", T0)
    assert "observedGeneration" not in without


def test_format_time_is_utc_with_z() -> None:
    east = dt.timezone(dt.timedelta(hours=2))
    assert format_time(dt.datetime(2025, 3, 1, 14, 0, 5, 999, tzinfo=east)) == "2025-03-01T12:00:05Z"
