"""Hostile input (issue 7) against a real apiserver: what the webhook accepts, the apiserver stores.

The unit properties (``tests/unit/test_properties.py``) check generated events against our reading
of the CRD. Here a few of them go to the real thing: each generated FileScan is created, and its
scan Job for a generated attempt is sent as a server-side dry run (schema, Job validation,
podFailurePolicy rules, PodSecurity ``restricted`` warnings). Few examples: each costs a few
apiserver round trips.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.builders import build_scan_job, owner_reference
from controller.events import Source, filescan_draft, parse_event
from controller.settings import FetchPolicy, ScanJobSettings, ScannerSettings
from tests.unit.test_properties import valid_events

pytestmark = pytest.mark.cluster


@pytest.fixture
def restricted_namespace(cluster: Any, namespace: str) -> str:
    """The test's namespace, warning about anything that breaks the ``restricted`` standard."""
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/warn=restricted",
                    "pod-security.kubernetes.io/enforce=restricted")
    return namespace


@settings(
    max_examples=25,
    deadline=None,
    database=None,
    # One namespace for all examples is what we want: each example removes its own FileScan.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(event=valid_events(), attempt=st.integers(min_value=1, max_value=1000))
def test_the_apiserver_accepts_every_generated_filescan_and_its_job(
    cluster: Any, filescan_crd: str, restricted_namespace: str, event: tuple[Source, dict[str, Any]], attempt: int
) -> None:
    source, body = event
    draft = filescan_draft(parse_event(source, body))
    namespace = restricted_namespace
    filescan = {
        "apiVersion": "comm100.io/v1alpha1",
        "kind": "FileScan",
        "metadata": {"name": draft.name, "namespace": namespace},
        "spec": draft.spec,
    }
    created = cluster.kubectl("create", "-f", "-", "-o", "json", input=json.dumps(filescan), check=False)
    assert created.returncode == 0, f"the apiserver refused the FileScan: {created.stderr.strip()}"
    try:
        stored = json.loads(created.stdout)
        # Integers and the URL come back as sent (no float rounding of int64, no rewriting).
        for key in ("fileSize", "fileURL", "guid", "ticketId", "chatId"):
            assert stored["spec"].get(key) == draft.spec.get(key), key
        job = build_scan_job(stored, attempt, ScanJobSettings(), ScannerSettings(),
                             FetchPolicy(allowed_file_hosts=["files.comm100.test"]))
        job["metadata"]["ownerReferences"] = [owner_reference(stored)]
        dry_run = cluster.kubectl("create", "--dry-run=server", "-f", "-", "-o", "json", input=json.dumps(job),
                                  check=False)
        assert dry_run.returncode == 0, f"the apiserver refused the Job: {dry_run.stderr.strip()}"
        assert "PodSecurity" not in dry_run.stderr, dry_run.stderr
        answered = json.loads(dry_run.stdout)
        [container] = answered["spec"]["template"]["spec"]["containers"]
        url = {e["name"]: e.get("value") for e in container["env"]}["FILESCAN_SCAN_URL"]
        assert url == draft.spec["fileURL"], "the URL reaches the pod verbatim"
    finally:
        cluster.kubectl("delete", "filescan", draft.name, "-n", namespace, "--wait=false", check=False)
