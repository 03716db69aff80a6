"""The operator end to end on the devstack: real Jobs, the real scanner, real clamd, the simulator."""

from __future__ import annotations

import time
from typing import Any

import pytest

from devstack.cluster import Devstack
from devstack.flow import EICAR, Flow
from tests.fixtures.cluster import kube_json
from tests.fixtures.operator import FlowFactory, JobWatcher, create_filescans, filescan_manifest
from tests.fixtures.waiting import wait_for

CLEAN = b"just an ordinary attachment\n"


def upload(flow: Flow, name: str, data: bytes, *, status: int | None = None, stall_seconds: float = 0.0,
           **manifest: Any) -> dict[str, Any]:
    """Serve ``data`` from the simulator and describe it as Comm100 would (size included)."""
    url = flow.sim.add_file(name, data, status=status, stall_seconds=stall_seconds)
    manifest.setdefault("size", len(data))
    manifest.setdefault("name", name)
    return filescan_manifest(flow.namespace, url, **manifest)


def finished(flow: Flow, count: int, timeout: float = 120) -> dict[str, dict[str, Any]]:
    return {f["spec"]["guid"]: f for f in flow.wait_all_finished(count, timeout=timeout)}


def ok_calls(flow: Flow, guid: str) -> list[tuple[str, Any]]:
    return [(c.method, c.body) for c in flow.sim.calls(guid=guid) if 200 <= c.status < 300]


def jobs_of(flow: Flow, filescan: str) -> list[dict[str, Any]]:
    return [j for j in flow.jobs() if j["metadata"]["labels"].get("comm100.io/filescan") == filescan]


def test_clean_file_is_reported_available_and_eicar_unavailable(run_flow: FlowFactory, cluster: Devstack) -> None:
    with run_flow() as flow:
        clean = upload(flow, "a.txt", CLEAN)
        bad = upload(flow, "b.com", EICAR, source="livechat")
        create_filescans(cluster, [clean, bad])

        scans = finished(flow, 2)
        clean_scan, bad_scan = scans[clean["spec"]["guid"]], scans[bad["spec"]["guid"]]

        assert clean_scan["status"]["phase"] == "Done"
        assert clean_scan["status"]["verdict"] == "clean"
        assert clean_scan["status"]["reportedStatus"] == "available"
        assert ok_calls(flow, clean["spec"]["guid"]) == [("PUT", {"status": "available"})]
        assert bad_scan["status"]["verdict"] == "infected"
        assert bad_scan["status"]["signature"].startswith("Eicar-Test-Signature")
        assert ok_calls(flow, bad["spec"]["guid"]) == [("PUT", {"status": "unavailable"})]
        assert flow.sim.calls(guid=bad["spec"]["guid"])[0].path == f"/api/v2/livechat/attachments/{bad['spec']['guid']}"

        conditions = {c["type"]: c for c in clean_scan["status"]["conditions"]}
        assert {t: c["status"] for t, c in conditions.items()} == {"Scanned": "True", "Reported": "True",
                                                                    "Ready": "True"}
        assert len(clean_scan["status"]["sha256"]) == 64
        assert clean_scan["status"]["bytes"] == len(CLEAN)
        assert clean_scan["status"]["engine"].startswith("ClamAV")

        job = jobs_of(flow, clean["metadata"]["name"])[0]
        assert job["metadata"]["ownerReferences"][0]["uid"] == clean_scan["metadata"]["uid"]
        events = kube_json(cluster, "get", "events", "-n", flow.namespace,
                           "--field-selector", f"involvedObject.name={clean['metadata']['name']}")["items"]
        assert "Reported" in {e["reason"] for e in events}


@pytest.mark.parametrize(
    ("style", "clean_body", "infected_body"),
    [
        ("available", {"status": "available"}, {"status": "unavailable"}),
        ("passed", {"status": "passed"}, {"status": "failed"}),
        ("isAvailable", {"isAvailable": True}, {"isAvailable": False}),
    ],
)
def test_each_status_style_sends_its_vocabulary(
    run_flow: FlowFactory, cluster: Devstack, style: str, clean_body: Any, infected_body: Any
) -> None:
    with run_flow({"FILESCAN_COMM100_STATUS_STYLE": style}) as flow:
        clean = upload(flow, "a.txt", CLEAN)
        bad = upload(flow, "b.com", EICAR)
        create_filescans(cluster, [clean, bad])
        finished(flow, 2)
        assert ok_calls(flow, clean["spec"]["guid"]) == [("PUT", clean_body)]
        assert ok_calls(flow, bad["spec"]["guid"]) == [("PUT", infected_body)]


def test_infected_file_is_deleted_under_the_delete_policy(run_flow: FlowFactory, cluster: Devstack) -> None:
    with run_flow({"FILESCAN_ON_INFECTED": "delete"}) as flow:
        bad = upload(flow, "b.com", EICAR)
        create_filescans(cluster, [bad])
        scan = finished(flow, 1)[bad["spec"]["guid"]]
        assert [m for m, _ in ok_calls(flow, bad["spec"]["guid"])] == ["DELETE"]
        assert scan["status"]["reportedStatus"] == "deleted"


def test_missing_file_fails_closed_without_retrying(run_flow: FlowFactory, cluster: Devstack) -> None:
    with run_flow({"FILESCAN_MAX_ATTEMPTS": "3"}) as flow:
        gone = upload(flow, "gone.pdf", CLEAN, status=404)
        create_filescans(cluster, [gone])
        scan = finished(flow, 1)[gone["spec"]["guid"]]
        assert scan["status"]["verdict"] == "error"
        assert scan["status"]["attempts"] == 1  # a 404 is permanent: exit 3, podFailurePolicy
        assert ok_calls(flow, gone["spec"]["guid"]) == [("PUT", {"status": "unavailable"})]
        assert len(jobs_of(flow, gone["metadata"]["name"])) == 1


def test_transient_download_errors_are_retried_then_fail_closed(run_flow: FlowFactory, cluster: Devstack) -> None:
    with run_flow({"FILESCAN_MAX_ATTEMPTS": "2"}) as flow:
        broken = upload(flow, "flaky.pdf", CLEAN, status=500)
        create_filescans(cluster, [broken])
        scan = finished(flow, 1, timeout=180)[broken["spec"]["guid"]]
        assert scan["status"]["verdict"] == "error"
        assert scan["status"]["attempts"] == 2
        assert sorted(j["metadata"]["name"] for j in jobs_of(flow, broken["metadata"]["name"])) == [
            f"{broken['metadata']['name']}-a1", f"{broken['metadata']['name']}-a2"]
        assert ok_calls(flow, broken["spec"]["guid"]) == [("PUT", {"status": "unavailable"})]


def test_error_policy_available_is_honoured(run_flow: FlowFactory, cluster: Devstack) -> None:
    with run_flow({"FILESCAN_ON_ERROR": "available"}) as flow:
        gone = upload(flow, "gone.pdf", CLEAN, status=404)
        create_filescans(cluster, [gone])
        finished(flow, 1)
        assert ok_calls(flow, gone["spec"]["guid"]) == [("PUT", {"status": "available"})]


def test_comm100_503_three_times_then_200_is_reported_once_it_succeeds(
    run_flow: FlowFactory, cluster: Devstack
) -> None:
    with run_flow() as flow:
        flow.sim.inject("status", status=503, times=3)
        clean = upload(flow, "a.txt", CLEAN)
        create_filescans(cluster, [clean])
        scan = finished(flow, 1, timeout=180)[clean["spec"]["guid"]]
        statuses = [c.status for c in flow.sim.calls(guid=clean["spec"]["guid"])]
        assert statuses == [503, 503, 503, 200]
        assert scan["status"]["reportedStatus"] == "available"


def test_429_retry_after_is_respected(run_flow: FlowFactory, cluster: Devstack) -> None:
    with run_flow() as flow:
        flow.sim.inject("status", status=429, times=1, retry_after=3)
        clean = upload(flow, "a.txt", CLEAN)
        create_filescans(cluster, [clean])
        finished(flow, 1, timeout=120)
        calls = flow.sim.calls(guid=clean["spec"]["guid"])
        assert [c.status for c in calls] == [429, 200]
        assert calls[1].time - calls[0].time >= 3.0  # the interval the API asked for, never less


def test_reporting_failure_is_visible_in_the_reported_condition(run_flow: FlowFactory, cluster: Devstack) -> None:
    with run_flow() as flow:
        flow.sim.set_tokens("a-token-the-operator-does-not-have")
        clean = upload(flow, "a.txt", CLEAN)
        create_filescans(cluster, [clean])

        def reported_condition() -> dict[str, Any] | None:
            obj = kube_json(cluster, "get", "filescan", clean["metadata"]["name"], "-n", flow.namespace)
            return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == "Reported"), None)

        condition = wait_for(reported_condition, timeout=60, what="a Reported condition")
        assert condition["status"] == "False"
        assert condition["reason"] == "Unauthorized"
        assert "retrying" in condition["message"]


def test_skipped_by_size_and_by_extension_without_a_job(run_flow: FlowFactory, cluster: Devstack) -> None:
    with run_flow({"FILESCAN_MAX_FILE_SIZE": "1000", "FILESCAN_BLOCKED_EXTENSIONS": "exe,js"}) as flow:
        big = upload(flow, "big.bin", CLEAN, size=5000)
        exe = upload(flow, "setup.exe", CLEAN)
        create_filescans(cluster, [big, exe])
        scans = finished(flow, 2)
        for manifest, reason in ((big, "FileTooLarge"), (exe, "ExtensionBlocked")):
            scan = scans[manifest["spec"]["guid"]]
            assert scan["status"]["verdict"] == "skipped"
            assert {c["type"]: c["reason"] for c in scan["status"]["conditions"]}["Scanned"] == reason
            assert ok_calls(flow, manifest["spec"]["guid"]) == [("PUT", {"status": "unavailable"})]
        assert flow.jobs() == []
        assert flow.sim.fetches() == []


def test_concurrency_limit_is_never_exceeded_while_30_scans_run(run_flow: FlowFactory, cluster: Devstack) -> None:
    limit = 4
    with run_flow({"FILESCAN_MAX_CONCURRENT_SCANS": str(limit)}) as flow, JobWatcher(cluster, flow.namespace) as jobs:
        url = flow.sim.add_file("a.txt", CLEAN)
        create_filescans(cluster, [filescan_manifest(flow.namespace, url, size=len(CLEAN)) for _ in range(30)])
        scans = finished(flow, 30, timeout=300)
        assert all(s["status"]["verdict"] == "clean" for s in scans.values())
        assert len(jobs.seen) == 30
        assert 1 <= jobs.peak <= limit


def test_operator_killed_mid_burst_finishes_every_scan_exactly_once(run_flow: FlowFactory, cluster: Devstack) -> None:
    with run_flow({"FILESCAN_MAX_CONCURRENT_SCANS": "6"}) as flow:
        clean_url, bad_url = flow.sim.add_file("a.txt", CLEAN), flow.sim.add_file("b.com", EICAR)
        manifests = [
            filescan_manifest(flow.namespace, bad_url, size=len(EICAR)) if i % 4 == 0
            else filescan_manifest(flow.namespace, clean_url, size=len(CLEAN))
            for i in range(40)
        ]
        create_filescans(cluster, manifests)
        wait_for(lambda: len([f for f in flow.filescans() if f.get("status", {}).get("phase") == "Done"]) >= 8,
                 timeout=120, what="some scans to finish before the crash")
        flow.operator.kill()
        time.sleep(1)
        flow.operator.start()

        scans = finished(flow, 40, timeout=300)
        jobs = flow.jobs()
        for manifest in manifests:
            guid, name = manifest["spec"]["guid"], manifest["metadata"]["name"]
            scan = scans[guid]
            expected = "unavailable" if manifest["spec"]["fileURL"] == bad_url else "available"
            assert scan["status"]["phase"] == "Done"
            owned = [j["metadata"]["name"] for j in jobs if j["metadata"]["labels"]["comm100.io/filescan"] == name]
            assert sorted(owned) == [f"{name}-a{n}" for n in range(1, scan["status"]["attempts"] + 1)]
            bodies = [body for _, body in ok_calls(flow, guid)]
            assert bodies and all(b == {"status": expected} for b in bodies), (guid, bodies)


def test_deleting_a_filescan_removes_its_job_and_pods(run_flow: FlowFactory, cluster: Devstack) -> None:
    with run_flow() as flow:
        slow = upload(flow, "slow.bin", CLEAN, stall_seconds=60)
        create_filescans(cluster, [slow])
        name = slow["metadata"]["name"]
        wait_for(lambda: kube_json(cluster, "get", "pods", "-n", flow.namespace, "-l", f"job-name={name}-a1")["items"],
                 timeout=60, what="the scan pod")
        cluster.kubectl("delete", "filescan", name, "-n", flow.namespace)
        wait_for(lambda: not flow.jobs(), timeout=60, what="the Job to be garbage-collected")
        wait_for(lambda: not kube_json(cluster, "get", "pods", "-n", flow.namespace)["items"],
                 timeout=60, what="the pod to be garbage-collected")
        assert flow.sim.calls() == []


def test_retention_deletes_a_finished_filescan(run_flow: FlowFactory, cluster: Devstack) -> None:
    with run_flow({"FILESCAN_RETENTION": "3s"}) as flow:
        clean = upload(flow, "a.txt", CLEAN)
        create_filescans(cluster, [clean])
        finished(flow, 1)
        wait_for(lambda: flow.filescans() == [], timeout=60, what="retention to delete the FileScan")
        assert ok_calls(flow, clean["spec"]["guid"]) == [("PUT", {"status": "available"})]


def test_scan_jobs_run_in_a_namespace_enforcing_the_restricted_profile(
    run_flow: FlowFactory, cluster: Devstack, namespace: str
) -> None:
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    with run_flow() as flow:
        clean = upload(flow, "a.txt", CLEAN)
        create_filescans(cluster, [clean])
        scan = finished(flow, 1)[clean["spec"]["guid"]]
        assert scan["status"]["verdict"] == "clean"
        [job] = flow.jobs()
        pod = job["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
        assert job["spec"]["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [3]


def test_kueue_mode_creates_every_job_suspended_for_kueue_to_admit(run_flow: FlowFactory, cluster: Devstack) -> None:
    settings = {"FILESCAN_KUEUE_QUEUE_NAME": "scans", "FILESCAN_MAX_CONCURRENT_SCANS": "2"}
    with run_flow(settings) as flow:
        create_filescans(cluster, [upload(flow, f"f{i}.txt", CLEAN) for i in range(5)])
        # Kueue, not our limit, decides what runs: all five Jobs exist at once, suspended, labelled.
        def five_jobs() -> list[dict[str, Any]] | None:
            found = flow.jobs()
            return found if len(found) == 5 else None

        jobs = wait_for(five_jobs, timeout=60, what="five suspended Jobs")
        for job in jobs:
            assert job["spec"]["suspend"] is True
            assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "scans"
        assert kube_json(cluster, "get", "pods", "-n", flow.namespace)["items"] == []  # nothing runs yet
        assert {f["status"]["phase"] for f in flow.filescans()} == {"Scanning"}
