"""Pure builders: the scan Job manifest and the FileScan status patches. No I/O happens here.

Design decisions:

* One Job per attempt, named deterministically from the FileScan and the attempt number, so a
  restarted operator that tries to create the same attempt again gets 409 and adopts the Job
  instead of starting a second scan.
* ``backoffLimit: 0``: retries are the operator's, with its own backoff and attempt count, so
  that each attempt is a Job of its own that can be inspected. ``podFailurePolicy`` fails the Job
  at once on exit code 3 (a permanent error) and ignores disruptions (an evicted or preempted
  pod is replaced within the same attempt, without counting against it).
* The pod is hardened to pass the ``restricted`` Pod Security Standard and carries no
  service-account token: the scanner needs nothing from the Kubernetes API.
* Owner references are added by the caller (the reconciler), never here, so builders stay
  independent of where the owner came from.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
from collections.abc import Mapping
from typing import Any

from controller.settings import FetchPolicy, ScanJobSettings, ScannerSettings

JSON = dict[str, Any]

APP_LABELS: Mapping[str, str] = {
    "app.kubernetes.io/name": "filescan-operator",
    "app.kubernetes.io/component": "scan",
    "app.kubernetes.io/managed-by": "filescan-operator",
}
FILESCAN_LABEL = "comm100.io/filescan"
ATTEMPT_LABEL = "comm100.io/attempt"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
SCRATCH_DIR = "/scratch"
EXIT_PERMANENT = 3
SCAN_USER = 65532

CONDITION_TYPES = ("Scanned", "Reported", "Ready")


def job_name(filescan_name: str, attempt: int) -> str:
    """``<filescan>-a<attempt>``, shortened with a hash when it would pass 63 characters."""
    suffix = f"-a{attempt}"
    name = filescan_name + suffix
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(filescan_name.encode()).hexdigest()[:10]
    return f"{filescan_name[: 63 - len(suffix) - 11]}-{digest}{suffix}"


def _seconds(value: dt.timedelta) -> int:
    return max(1, int(value.total_seconds()))


def build_scan_job(
    filescan: Mapping[str, Any],
    attempt: int,
    job: ScanJobSettings,
    scanner: ScannerSettings,
    fetch: FetchPolicy,
) -> JSON:
    """The Job for ``attempt`` (1-based) of scanning ``filescan``."""
    meta, spec = filescan["metadata"], filescan["spec"]
    labels = dict(APP_LABELS) | {FILESCAN_LABEL: meta["name"], ATTEMPT_LABEL: str(attempt)}
    if job.kueue_queue_name:
        labels |= {KUEUE_QUEUE_LABEL: job.kueue_queue_name}
    env = [
        {"name": "FILESCAN_SCAN_URL", "value": spec["fileURL"]},
        {"name": "FILESCAN_SCAN_ENGINE", "value": scanner.scan_engine},
        {"name": "FILESCAN_CLAMD_ADDRESS", "value": scanner.clamd_address},
        {"name": "FILESCAN_ALLOWED_FILE_HOSTS", "value": ",".join(fetch.allowed_file_hosts)},
        {"name": "FILESCAN_ALLOW_HTTP", "value": "true" if fetch.allow_http else "false"},
        {"name": "FILESCAN_MAX_FILE_SIZE", "value": str(fetch.max_file_size)},
        {"name": "FILESCAN_FETCH_TIMEOUT_SECONDS", "value": str(scanner.fetch_timeout_seconds)},
        {"name": "TMPDIR", "value": SCRATCH_DIR},
    ]
    if scanner.clamscan_database:
        env.append({"name": "FILESCAN_CLAMSCAN_DATABASE", "value": str(scanner.clamscan_database)})
    container: JSON = {
        "name": "scanner",
        "image": job.scan_image,
        "imagePullPolicy": "IfNotPresent",
        "command": list(job.scan_command),
        # The URL goes in the environment, not argv: a signed URL's query string is a secret, and
        # argv shows in process lists on the node and in runtime logs.
        "args": ["--expected-size", str(spec["fileSize"])],
        "env": env,
        "resources": {
            "requests": {"cpu": job.scan_cpu_request, "memory": job.scan_memory_request},
            "limits": {"cpu": job.scan_cpu_limit, "memory": job.scan_memory_limit},
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "volumeMounts": [{"name": "scratch", "mountPath": SCRATCH_DIR}],
    }
    pod_spec: JSON = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": SCAN_USER,
            "runAsGroup": SCAN_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": job.scan_scratch_size}}],
    }
    if job.scan_node_selector:
        pod_spec["nodeSelector"] = dict(job.scan_node_selector)
    if job.scan_tolerations:
        pod_spec["tolerations"] = copy.deepcopy(job.scan_tolerations)
    if job.scan_affinity:
        pod_spec["affinity"] = copy.deepcopy(job.scan_affinity)
    if job.scan_priority_class_name:
        pod_spec["priorityClassName"] = job.scan_priority_class_name
    job_spec: JSON = {
        "backoffLimit": 0,
        "activeDeadlineSeconds": _seconds(job.scan_active_deadline),
        "ttlSecondsAfterFinished": _seconds(job.scan_ttl_after_finished),
        "podFailurePolicy": {
            "rules": [
                {"action": "FailJob", "onExitCodes": {"containerName": "scanner", "operator": "In",
                                                      "values": [EXIT_PERMANENT]}},
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            ]
        },
        "template": {
            "metadata": {
                "labels": dict(labels),
                # A running scan must not be consolidated away by Karpenter.
                "annotations": {"karpenter.sh/do-not-disrupt": "true"},
            },
            "spec": pod_spec,
        },
    }
    if job.kueue_queue_name:
        job_spec["suspend"] = True
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job_name(meta["name"], attempt), "namespace": meta["namespace"], "labels": labels},
        "spec": job_spec,
    }


def owner_reference(filescan: Mapping[str, Any]) -> JSON:
    """The reference that makes a Job (and so its pods) go when its FileScan is deleted."""
    return {
        "apiVersion": filescan["apiVersion"],
        "kind": filescan["kind"],
        "name": filescan["metadata"]["name"],
        "uid": filescan["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def format_time(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def with_condition(
    conditions: list[JSON] | None,
    kind: str,
    status: bool,
    reason: str,
    message: str,
    now: dt.datetime,
    generation: int | None = None,
) -> list[JSON]:
    """``conditions`` with ``kind`` set; ``lastTransitionTime`` moves only when the status changes."""
    value = "True" if status else "False"
    result = [copy.deepcopy(c) for c in conditions or [] if c.get("type") != kind]
    previous = next((c for c in conditions or [] if c.get("type") == kind), None)
    transition = previous["lastTransitionTime"] if previous and previous.get("status") == value else format_time(now)
    condition: JSON = {"type": kind, "status": value, "reason": reason, "message": message[:4000],
                       "lastTransitionTime": transition}
    if generation is not None:
        condition["observedGeneration"] = generation
    result.append(condition)
    return sorted(result, key=lambda c: CONDITION_TYPES.index(c["type"]) if c["type"] in CONDITION_TYPES else 99)
