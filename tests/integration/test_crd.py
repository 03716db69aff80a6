"""The FileScan CRD on the real apiserver: hand-written objects are held to the same rules."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml

from tests.fixtures.filescans import get_filescan, new_guid

pytestmark = pytest.mark.cluster


def manifest(namespace: str, *, source: str = "ticket", guid: str | None = None, **spec: Any) -> dict[str, Any]:
    guid = guid or new_guid()
    owner = {"ticketId": 7} if source == "ticket" else {"chatId": 7}
    return {
        "apiVersion": "comm100.io/v1alpha1",
        "kind": "FileScan",
        "metadata": {"name": f"{source}-{guid.lower()}", "namespace": namespace},
        "spec": {
            "source": source,
            "event": "fileUploaded",
            "eventId": "evt-1",
            **owner,
            "guid": guid,
            "fileName": "a.pdf",
            "fileExtension": "pdf",
            "fileSize": 10,
            "fileURL": "https://files.comm100.test/a.pdf",
            "fileLocalPath": "/a.pdf",
            **spec,
        },
    }


def create(cluster: Any, obj: dict[str, Any]) -> Any:
    return cluster.kubectl("create", "-f", "-", input=json.dumps(obj), check=False)


def test_kinds_are_listed_by_name_short_name_and_category(cluster: Any, filescan_crd: str, namespace: str) -> None:
    created = create(cluster, manifest(namespace))
    assert created.returncode == 0, created.stderr
    for resource in ("filescans", "filescan", "fscan", "filescans.comm100.io"):
        listed = cluster.kubectl("get", resource, "-n", namespace, "-o", "name")
        assert listed.stdout.count("filescan.comm100.io/") == 1, (resource, listed.stdout)
    # The category lists every kind of this project at once.
    assert "filescan.comm100.io/" in cluster.kubectl("get", "comm100", "-n", namespace, "-o", "name").stdout


def test_printer_columns(cluster: Any, filescan_crd: str, namespace: str) -> None:
    obj = manifest(namespace, fileName="invoice.pdf", fileSize=48213)
    assert create(cluster, obj).returncode == 0
    name = obj["metadata"]["name"]
    status = {"status": {"phase": "Done", "verdict": "infected", "signature": "Eicar-Signature", "jobName": "j-1"}}
    cluster.kubectl(
        "patch", "fscan", name, "-n", namespace, "--subresource=status", "--type=merge", "-p", json.dumps(status)
    )
    plain = cluster.kubectl("get", "fscan", name, "-n", namespace).stdout.splitlines()
    assert plain[0].split() == ["NAME", "SOURCE", "FILE", "SIZE", "PHASE", "VERDICT", "AGE"]
    assert plain[1].split()[:6] == [name, "ticket", "invoice.pdf", "48213", "Done", "infected"]
    wide = cluster.kubectl("get", "fscan", name, "-n", namespace, "-o", "wide").stdout.splitlines()
    assert wide[0].split() == ["NAME", "SOURCE", "FILE", "SIZE", "PHASE", "VERDICT", "AGE", "SIGNATURE", "JOB"]
    assert wide[1].split()[-2:] == ["Eicar-Signature", "j-1"]


def _without(obj: dict[str, Any], key: str) -> dict[str, Any]:
    changed = copy.deepcopy(obj)
    del changed["spec"][key]
    return changed


BAD_SPECS = {
    "source not in enum": ({"source": "email"}, "spec.source"),
    "guid not a GUID": ({"guid": "not-a-guid-at-all"}, "spec.guid"),
    "negative size": ({"fileSize": -1}, "spec.fileSize"),
    "size as string": ({"fileSize": "10"}, "spec.fileSize"),
    "negative ticketId": ({"ticketId": -3}, "spec.ticketId"),
    "file name too long": ({"fileName": "x" * 1025}, "spec.fileName"),
    "URL too long": ({"fileURL": "https://files.comm100.test/" + "a" * 4096}, "spec.fileURL"),
    "event not fileUploaded": ({"event": "fileDeleted"}, "spec.event"),
    "eventTime not a date-time": ({"eventTime": "yesterday"}, "spec.eventTime"),
    "ticket with a chatId too": ({"chatId": 5}, "exactly one"),
}


@pytest.mark.parametrize(("change", "complaint"), BAD_SPECS.values(), ids=BAD_SPECS.keys())
def test_schema_rejects_a_bad_field(
    cluster: Any, filescan_crd: str, namespace: str, change: dict[str, Any], complaint: str
) -> None:
    guid = change.get("guid") or new_guid()
    obj = manifest(namespace, **change)
    obj["metadata"]["name"] = f"ticket-{guid.lower()}"
    refused = create(cluster, obj)
    assert refused.returncode != 0
    assert complaint in refused.stderr, refused.stderr
    assert get_filescan(cluster, namespace, obj["metadata"]["name"]) is None


@pytest.mark.parametrize("missing", ["source", "eventId", "guid", "fileName", "fileSize", "fileURL"])
def test_schema_requires_fields(cluster: Any, filescan_crd: str, namespace: str, missing: str) -> None:
    obj = _without(manifest(namespace), missing)
    refused = create(cluster, obj)
    assert refused.returncode != 0
    assert f"spec.{missing}" in refused.stderr or "exactly one" in refused.stderr, refused.stderr


def test_livechat_needs_chat_id_not_ticket_id(cluster: Any, filescan_crd: str, namespace: str) -> None:
    wrong = manifest(namespace, source="livechat")
    wrong["spec"]["ticketId"] = wrong["spec"].pop("chatId")
    refused = create(cluster, wrong)
    assert refused.returncode != 0 and "exactly one" in refused.stderr, refused.stderr
    assert create(cluster, manifest(namespace, source="livechat")).returncode == 0


def test_name_must_follow_source_and_guid(cluster: Any, filescan_crd: str, namespace: str) -> None:
    obj = manifest(namespace)
    obj["metadata"]["name"] = "my-own-name"
    refused = create(cluster, obj)
    assert refused.returncode != 0 and "metadata.name must be" in refused.stderr, refused.stderr
    upper = manifest(namespace, guid=new_guid().upper())
    assert create(cluster, upper).returncode == 0, "an upper-case guid maps to the lower-case name"


def test_spec_is_immutable_status_and_labels_are_not(cluster: Any, filescan_crd: str, namespace: str) -> None:
    obj = manifest(namespace)
    name = obj["metadata"]["name"]
    assert create(cluster, obj).returncode == 0
    before = get_filescan(cluster, namespace, name)
    assert before is not None

    for patch in ({"spec": {"fileName": "other.pdf"}}, {"spec": {"fileURL": "https://files.comm100.test/b"}}):
        refused = cluster.kubectl(
            "patch", "fscan", name, "-n", namespace, "--type=merge", "-p", json.dumps(patch), check=False
        )
        assert refused.returncode != 0 and "spec is immutable" in refused.stderr, refused.stderr
    replaced = copy.deepcopy(before)
    replaced["spec"]["fileSize"] = 11
    refused = cluster.kubectl("replace", "-f", "-", input=json.dumps(replaced), check=False)
    assert refused.returncode != 0 and "spec is immutable" in refused.stderr, refused.stderr

    cluster.kubectl("label", "fscan", name, "-n", namespace, "scanned-by=test")
    cluster.kubectl(
        "patch", "fscan", name, "-n", namespace, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": {"phase": "Queued", "attempts": 1}}),
    )  # fmt: skip
    after = get_filescan(cluster, namespace, name)
    assert after is not None
    assert after["spec"] == before["spec"]
    assert after["status"]["phase"] == "Queued"


BAD_STATUSES = {
    "phase": {"phase": "Exploded"},
    "verdict": {"verdict": "maybe"},
    "sha256": {"sha256": "xyz"},
    "attempts": {"attempts": -1},
    "conditions": {"conditions": [{"type": "Scanned", "status": "Perhaps"}]},
}


@pytest.mark.parametrize("status", BAD_STATUSES.values(), ids=BAD_STATUSES.keys())
def test_status_schema_rejects_bad_values(
    cluster: Any, filescan_crd: str, namespace: str, status: dict[str, Any]
) -> None:
    obj = manifest(namespace)
    assert create(cluster, obj).returncode == 0
    refused = cluster.kubectl(
        "patch", "fscan", obj["metadata"]["name"], "-n", namespace, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": status}), check=False,
    )  # fmt: skip
    assert refused.returncode != 0, f"status {status} was accepted"
    assert "status." in refused.stderr, refused.stderr


def test_status_keeps_conditions_and_kopf_progress(cluster: Any, filescan_crd: str, namespace: str) -> None:
    obj = manifest(namespace)
    name = obj["metadata"]["name"]
    assert create(cluster, obj).returncode == 0
    status = {
        "phase": "Done",
        "verdict": "clean",
        "sha256": "a" * 64,
        "finishedAt": "2025-03-01T12:00:05Z",
        "observedGeneration": 1,
        "conditions": [
            {
                "type": "Scanned",
                "status": "True",
                "reason": "Clean",
                "message": "no signature matched",
                "lastTransitionTime": "2025-03-01T12:00:04Z",
            }
        ],
        "kopf": {"progress": {"scan": {"retries": 1, "started": "2025-03-01T12:00:00.1"}}},
        "notInSchema": "pruned",
    }
    cluster.kubectl(
        "patch", "fscan", name, "-n", namespace, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": status}),
    )  # fmt: skip
    stored = get_filescan(cluster, namespace, name)
    assert stored is not None
    assert stored["status"]["conditions"][0]["reason"] == "Clean"
    assert stored["status"]["kopf"]["progress"]["scan"]["retries"] == 1
    assert "notInSchema" not in stored["status"], "unknown status fields are pruned"


def test_manifest_is_one_crd_in_the_expected_group() -> None:
    from tests.fixtures.filescans import CRD_PATH

    documents = [doc for doc in yaml.safe_load_all(CRD_PATH.read_text()) if doc]
    assert len(documents) == 1
    crd = documents[0]
    assert crd["spec"]["group"] == "comm100.io"
    assert crd["spec"]["names"]["shortNames"] == ["fscan"]
    assert crd["spec"]["versions"][0]["subresources"] == {"status": {}}
