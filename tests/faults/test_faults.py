"""Faults under real traffic: the control plane, the operator, clamd, Comm100 and scan pods fail
while events arrive, and every scenario ends by reconciling the ledgers (see ``ledger.py``).

The durations here are short so that ``make test`` stays quick; ``make bench`` runs the long
variant (``bench/bench_faults.py``) with minutes-long outages.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from devstack.cluster import Devstack
from tests.faults.ledger import Ledger
from tests.fixtures.operator import FlowFactory, JobWatcher
from tests.fixtures.waiting import wait_for

# ``make bench`` runs the long variant: FILESCAN_FAULT_SCALE multiplies the traffic and holds every
# outage for OUTAGE seconds more (the default, 1, keeps ``make test`` quick).
SCALE = max(1, int(os.environ.get("FILESCAN_FAULT_SCALE", "1")))
OUTAGE = 0.0 if SCALE == 1 else 30.0 * SCALE

# Enough attempts that retried scans outlive an outage (backoff 5, 10, 20, 40, 80, 160 s…).
RETRYING = {"FILESCAN_MAX_ATTEMPTS": "6" if SCALE == 1 else "9"}


def n(count: int) -> int:
    return count * SCALE


def test_apiserver_stopped_and_restarted_while_events_arrive(run_flow: FlowFactory, cluster: Devstack) -> None:
    with run_flow(RETRYING, webhook=True) as flow:
        ledger = Ledger(flow)
        uploads = ledger.new_uploads(n(18))
        third = len(uploads) // 3
        for upload in uploads[:third]:
            assert ledger.post(upload) == 200

        cluster.stop_process("kube-apiserver")
        try:
            refused = [ledger.post(upload) for upload in uploads[third:2 * third]]
            assert refused == [503] * third  # never a 2xx for an event that is not stored
            response = flow.post(uploads[third].source, uploads[third].body)
            assert response.headers.get("Retry-After")
            time.sleep(OUTAGE)
        finally:
            cluster.start_process("kube-apiserver")

        for upload in uploads[2 * third:]:
            ledger.post(upload)
        ledger.repost_until_acknowledged()
        ledger.reconcile()


def test_etcd_stopped_and_restarted(run_flow: FlowFactory, cluster: Devstack) -> None:
    with run_flow(RETRYING, webhook=True) as flow:
        ledger = Ledger(flow)
        uploads = ledger.new_uploads(n(12))
        third = len(uploads) // 3
        for upload in uploads[:third]:
            ledger.post(upload)
        cluster.stop_process("etcd")
        try:
            answers = [ledger.post(upload) for upload in uploads[third:2 * third]]
            assert all(not 200 <= a < 300 for a in answers), answers
            time.sleep(OUTAGE)
        finally:
            cluster.start_process("etcd")
        # After a long outage the apiserver's etcd client may sit in gRPC's reconnect backoff (up to
        # 2 minutes) before it tries again: the long variant allows for that.
        wait_for(lambda: cluster.get("/readyz")[0] == 200, timeout=60 + 2 * OUTAGE,
                 what="the apiserver to be ready again")
        for upload in uploads[2 * third:]:
            ledger.post(upload)
        ledger.repost_until_acknowledged()
        ledger.reconcile()


def test_operator_killed_repeatedly_while_a_standby_takes_over(
    run_flow: FlowFactory, cluster: Devstack, namespace: str
) -> None:
    cluster.kubectl("apply", "-f", str(_peering_crd()))
    cluster.kubectl("wait", "--for", "condition=established", "crd/kopfpeerings.kopf.dev")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=(
        "apiVersion: kopf.dev/v1\nkind: KopfPeering\nmetadata:\n  name: filescan-operator\n"))
    limit, lifetime = 4, 4
    settings = {"FILESCAN_PEERING_LIFETIME": f"{lifetime}s", "FILESCAN_MAX_CONCURRENT_SCANS": str(limit)}
    replicas = [("--priority", "100"), ("--priority", "50")]
    with run_flow(settings, webhook=True, operators=replicas) as flow, JobWatcher(cluster, namespace) as jobs:
        ledger = Ledger(flow)
        uploads = ledger.new_uploads(n(30))
        primary = flow.operators[0]
        rounds = 3 * SCALE
        for round_number in range(rounds):
            for upload in uploads[round_number * 10:(round_number + 1) * 10]:
                ledger.post(upload)
            time.sleep(1.5)
            primary.kill()  # SIGKILL: no clean-up, its peering record just goes stale
            time.sleep(lifetime + 1)  # the standby takes over mid-burst
            primary.start()  # back at the higher priority, as a restarted pod would be: the
            # standby, already running its loops, must step back (the reconciler's peering gate)
        ledger.repost_until_acknowledged()
        ledger.reconcile()
        assert jobs.peak <= limit, f"{jobs.peak} scan Jobs ran at once with a limit of {limit}"


def test_clamd_down_for_a_while_then_back(run_flow: FlowFactory, cluster: Devstack) -> None:
    with run_flow(RETRYING, webhook=True, own_clamd=True) as flow:
        ledger = Ledger(flow)
        flow.clamd.stop()
        for upload in ledger.new_uploads(n(6)):
            assert ledger.post(upload) == 200
        wait_for(lambda: [j for j in flow.jobs() if _failed(j)], timeout=60, what="a scan attempt to fail")
        time.sleep(2 + OUTAGE)
        assert flow.sim.calls() == []  # nothing reported while nothing could be scanned
        flow.clamd.restart()
        ledger.reconcile()
        assert any(f["status"]["attempts"] > 1 for f in flow.filescans())


def test_comm100_down_then_a_storm_of_429s(run_flow: FlowFactory, cluster: Devstack) -> None:
    rate_calls, rate_period = 8, 2.0
    settings = {"FILESCAN_COMM100_RATE": f"{rate_calls}/{int(rate_period)}s", "FILESCAN_COMM100_TIMEOUT_SECONDS": "2"}
    with run_flow(settings, webhook=True) as flow:
        ledger = Ledger(flow)
        flow.sim.down()
        count = n(15)
        for upload in ledger.new_uploads(count):
            assert ledger.post(upload) == 200

        def reporting() -> bool:
            phases = [(f.get("status") or {}).get("phase") for f in flow.filescans()]
            return len(phases) == count and all(p == "Reporting" for p in phases)

        wait_for(reporting, timeout=120 * SCALE, what="every scan to be waiting for Comm100")
        time.sleep(OUTAGE)
        flow.sim.clear_faults()
        flow.sim.inject("status", status=429, retry_after=2, times=12)
        ledger.reconcile(timeout=300 * SCALE)

        starts = sorted(c.time for c in flow.sim.calls())
        busiest = max(sum(1 for t in starts if s <= t < s + rate_period) for s in starts)
        print(f"  busiest {rate_period}s window: {busiest} calls (limit {rate_calls})")
        assert busiest <= rate_calls


def test_scan_pod_killed_mid_scan_is_retried(run_flow: FlowFactory, cluster: Devstack) -> None:
    with run_flow(RETRYING, webhook=True) as flow:
        ledger = Ledger(flow)
        [upload] = ledger.new_uploads(1, infected_every=2)  # i=0 is EICAR: must not slip through
        url = upload.body["fileURL"]
        flow.sim.add_file(url.rsplit("/", 1)[-1], _eicar(), stall_seconds=4)
        ledger.post(upload)
        pid = wait_for(lambda: _scanner_pid(url), timeout=60, what="the scan process")
        os.kill(pid, signal.SIGKILL)
        ledger.reconcile()
        assert flow.filescans()[0]["status"]["attempts"] == 2


def test_scan_exceeding_its_deadline_fails_closed(run_flow: FlowFactory, cluster: Devstack) -> None:
    settings = {"FILESCAN_SCAN_ACTIVE_DEADLINE": "2s", "FILESCAN_MAX_ATTEMPTS": "2"}
    with run_flow(settings, webhook=True) as flow:
        ledger = Ledger(flow)
        [upload] = ledger.new_uploads(1, infected_every=1000)  # a clean file that never arrives in time
        flow.sim.add_file(upload.body["fileURL"].rsplit("/", 1)[-1], b"slow", stall_seconds=60)
        ledger.post(upload)
        [scan] = flow.wait_all_finished(1, timeout=120)
        assert scan["status"]["verdict"] == "error"
        assert scan["status"]["attempts"] == 2
        assert [_said(c.body) for c in flow.sim.calls() if c.status == 200] == ["unavailable"]
        assert all(_failed(j) == "DeadlineExceeded" for j in flow.jobs())


def _failed(job: dict[str, Any]) -> str | None:
    for condition in job.get("status", {}).get("conditions") or []:
        if condition["type"] == "Failed" and condition["status"] == "True":
            return str(condition.get("reason"))
    return None


def _scanner_pid(url: str) -> int | None:
    """The scan process for ``url`` (the Job passes it in FILESCAN_SCAN_URL, not in argv)."""
    wanted = f"FILESCAN_SCAN_URL={url}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if wanted in (entry / "environ").read_bytes().split(b"\0") and \
                    b"scan" in (entry / "cmdline").read_bytes().split(b"\0"):
                return int(entry.name)
        except OSError:
            continue
    return None


def _eicar() -> bytes:
    from devstack.flow import EICAR

    return EICAR


def _said(body: Any) -> str | None:
    return body.get("status") if isinstance(body, dict) else None


def _peering_crd() -> Any:
    from devstack.flow import REPO

    return REPO / "manifests" / "kopf-peering-crd.yaml"
