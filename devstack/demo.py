"""``make demo``: the main job on a throwaway local stack, end to end, with a check at the end.

A real control plane, real clamd, the operator and the webhook as processes, the Comm100
simulator. Posts a clean file and an EICAR file for tickets (the seed's flat body) and for live
chats (the newer nested body), shows what Kubernetes and Comm100 saw, and exits non-zero with
the reason if any file did not end with the right call.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
import uuid
from pathlib import Path

from devstack.cluster import Devstack
from devstack.flow import EICAR, Flow, livechat_event, ticket_event

CLEAN = b"%PDF-1.4\n% a perfectly ordinary quarterly report\n"


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def run_demo(directory: Path | None) -> int:
    with contextlib.ExitStack() as stack_exit:
        root = directory or Path(stack_exit.enter_context(tempfile.TemporaryDirectory(prefix="filescan-demo-")))
        root.mkdir(parents=True, exist_ok=True)
        say("Starting the local control plane (etcd, kube-apiserver, kube-controller-manager, pod runner)")
        stack = Devstack.up(root / "stack")
        stack_exit.callback(stack.down)
        print(stack.kubectl("get", "nodes,namespaces").stdout)

        say("Starting clamd, the Comm100 simulator, `filescan operator` and `filescan webhook`")
        flow = stack_exit.enter_context(Flow.running(stack, root / "flow"))
        print(f"clamd {flow.clamd.address}   Comm100 simulator {flow.sim.url}")
        print(f"webhook {flow.webhook.health_url.rsplit('/', 1)[0]}   namespace {flow.namespace}")

        files = {"quarterly-report.pdf": CLEAN, "invoice.com": EICAR}
        expected: dict[str, str] = {}
        posted: list[tuple[str, dict[str, object]]] = []
        say("Comm100 posts fileUploaded events (ticket: flat body; livechat: nested payload)")
        for source, make_event in (("ticket", ticket_event), ("livechat", livechat_event)):
            for name, data in files.items():
                guid = str(uuid.uuid4())
                url = flow.sim.add_file(f"{source}-{name}", data)
                event = make_event(guid, url, name, len(data))
                posted.append((source, event))
                response = flow.post(source, event)
                print(f"POST /webhooks/{source} {name:<22} → {response.status_code} {response.text}")
                if response.status_code != 200:
                    print(f"FAILED: the webhook refused a valid event: {response.text}")
                    return 1
                expected[guid] = "available" if data is CLEAN else "unavailable"
        say("Comm100 reposts the first event (as it does when an answer is lost): no second scan")
        source, event = posted[0]
        response = flow.post(source, event)
        print(f"POST /webhooks/{source} (repost)              → {response.status_code} {response.text}")

        started = time.monotonic()
        flow.wait_all_finished(len(expected), timeout=180)
        print(f"all {len(expected)} FileScans finished in {time.monotonic() - started:.1f}s")

        say("kubectl get filescans -o wide")
        print(stack.kubectl("get", "filescans", "-n", flow.namespace, "-o", "wide").stdout)
        say("kubectl get jobs (one scan Job per file, finished)")
        print(stack.kubectl("get", "jobs", "-n", flow.namespace).stdout)

        say("Calls the Comm100 API received")
        calls = flow.sim.calls()
        for call in calls:
            print(f"{call.method:<6} {call.path:<70} {call.body} → {call.status}")

        problems = []
        for guid, status in expected.items():
            got = [c.body for c in calls if c.guid == guid and c.status == 200]
            if got != [{"status": status}]:
                problems.append(f"{guid}: expected one PUT {{'status': '{status}'}}, got {got}")
        scans = {f["spec"]["guid"]: f for f in flow.filescans()}
        if len(scans) != len(expected):
            problems.append(f"expected {len(expected)} FileScans, found {len(scans)}")
        fetches = len(flow.sim.fetches())
        if fetches != len(expected):
            problems.append(f"expected one download per file ({len(expected)}), the file server saw {fetches}")
        say("Result")
        if problems:
            for problem in problems:
                print(f"FAILED: {problem}")
            return 1
        print(f"OK: {len(expected)} uploads, each ended with exactly one correct call to Comm100 "
              "(clean → available, EICAR → unavailable)")
        return 0
    return 1
