"""Load: a sustained stream of uploads through the whole stack, and nothing lost.

Events are posted to the real ``filescan webhook`` at a fixed rate (``BENCH_LOAD_RATE`` per second,
default 20) for ``BENCH_LOAD_SECONDS`` (default 300), open loop: each event is sent at its
scheduled time whatever happened to the ones before, with up to 256 posts in flight, as Comm100
would keep posting. Ticket (flat body) and live chat (``payload`` body) alternate; every
``BENCH_LOAD_EICAR_EVERY``-th file (default 10) is EICAR, the rest clean. A post that fails or
gets a 5xx is reposted at once, up to twice (Comm100's first repost is immediate). The webhook
stores FileScans; the real operator runs Jobs (``BENCH_LOAD_MAX_SCANS`` at once, default 20);
the pod runner runs ``filescan scan`` in each; it streams the file from the Comm100 simulator
into clamd; the operator PUTs the verdict to the simulator. Then the bench waits (at most
``BENCH_LOAD_DRAIN_SECONDS``, default 900) for every acknowledged event to be reported.

Printed: throughput offered and achieved (reports per second over the whole run and while the
stream was on), p50/p99 upload-to-report latency (post sent → the simulator receiving the PUT),
the peak RSS (``VmHWM``) of the webhook and the operator, CPU seconds by process, and the ledger:
events sent / acknowledged 2xx / FileScans stored / final Comm100 calls right / wrong / lost
(acknowledged but never rightly reported; must be 0).

The operator's Comm100 pacer is raised (``FILESCAN_COMM100_RATE``) for this run: the default,
Comm100's documented 300 calls per 5 minutes per client IP, would cap reports at 1 per second
after the first 300, whatever the rest of the stack can do. The devstack runs without the audit
log (it costs the apiserver CPU), or is reused from ``FILESCAN_TEST_DEVSTACK_DIR``.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import httpx

from bench.common import devstack, fresh_namespace, load_average, machine, percentile, workdir
from devstack.comm100sim import Call
from devstack.flow import EICAR, WEBHOOK_TOKEN, Flow, livechat_event, ticket_event, wait_until
from devstack.observe import cpu_seconds, machine_busy_seconds, peak_rss_mib

IN_FLIGHT = 256
REPOSTS = 2


@dataclass
class Upload:
    index: int
    source: str
    guid: str
    infected: bool
    body: dict[str, object]
    sent: float = 0.0
    """``time.time()`` when the first post was sent."""
    statuses: list[int] = field(default_factory=list)
    """Each post's answer; 0 for a transport error."""

    @property
    def acknowledged(self) -> bool:
        return any(200 <= s < 300 for s in self.statuses)

    @property
    def expected(self) -> str:
        return "unavailable" if self.infected else "available"


def _uploads(flow: Flow, count: int, eicar_every: int) -> list[Upload]:
    uploads = []
    for index in range(count):
        guid = str(uuid.uuid4())
        infected = eicar_every > 0 and index % eicar_every == eicar_every - 1
        source = ("ticket", "livechat")[index % 2]
        name = f"upload-{index}.{'com' if infected else 'txt'}"
        data = EICAR if infected else f"attachment {index}: nothing to see here\n".encode() * 8
        url = flow.sim.add_file(name, data)
        make = ticket_event if source == "ticket" else livechat_event
        uploads.append(Upload(index, source, guid, infected, make(guid, url, name, len(data))))
    return uploads


async def _post_all(base_url: str, uploads: list[Upload], rate: float) -> float:
    """Send every upload at its scheduled time; returns how late the latest send was, in seconds."""
    gate = asyncio.Semaphore(IN_FLIGHT)
    headers = {"Authorization": f"Bearer {WEBHOOK_TOKEN}"}
    latest = 0.0
    limits = httpx.Limits(max_connections=IN_FLIGHT, max_keepalive_connections=64)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=30) as client:
        async def post(upload: Upload, due: float) -> None:
            nonlocal latest
            async with gate:
                latest = max(latest, time.monotonic() - due)
                upload.sent = time.time()
                for _ in range(1 + REPOSTS):
                    try:
                        response = await client.post(f"{base_url}/webhooks/{upload.source}", json=upload.body)
                        upload.statuses.append(response.status_code)
                    except httpx.TransportError:
                        upload.statuses.append(0)
                    if upload.acknowledged or 400 <= upload.statuses[-1] < 500:
                        return

        start = time.monotonic()
        tasks = []
        for upload in uploads:
            due = start + upload.index / rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            tasks.append(asyncio.create_task(post(upload, due)))
        await asyncio.gather(*tasks)
    return latest


class _Sampler(threading.Thread):
    """Counts the simulator's successful PUTs once a second, for the throughput while streaming."""

    def __init__(self, flow: Flow) -> None:
        super().__init__(daemon=True, name="sampler")
        self.flow = flow
        self.samples: list[tuple[float, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(1.0):
            done = sum(1 for c in self.flow.sim.calls(method="PUT") if 200 <= c.status < 300)
            self.samples.append((time.time(), done))


def main() -> None:
    rate = float(os.environ.get("BENCH_LOAD_RATE", "20"))
    seconds = float(os.environ.get("BENCH_LOAD_SECONDS", "300"))
    eicar_every = int(os.environ.get("BENCH_LOAD_EICAR_EVERY", "10"))
    max_scans = int(os.environ.get("BENCH_LOAD_MAX_SCANS", "20"))
    drain = float(os.environ.get("BENCH_LOAD_DRAIN_SECONDS", "900"))
    count = round(rate * seconds)
    print(f"{time.strftime('%Y-%m-%d %H:%M %Z')}, {machine()}, {load_average()} before the run")
    print(f"offered: {rate:g} uploads/s for {seconds:g} s = {count} uploads, 1 in {eicar_every} EICAR, "
          f"ticket and livechat alternating; at most {max_scans} scans at once")
    settings = {"FILESCAN_MAX_CONCURRENT_SCANS": str(max_scans), "FILESCAN_COMM100_RATE": f"{10 * count + 300}/5m"}
    with devstack(audit=False) as stack, workdir("bench-load-") as work:
        namespace = fresh_namespace(stack, "bench-load")
        with Flow.running(stack, work, namespace=namespace, settings=settings) as flow:
            uploads = _uploads(flow, count, eicar_every)
            assert flow.webhook.process is not None and flow.operator.process is not None
            pids = {"webhook": flow.webhook.process.pid, "operator": flow.operator.process.pid,
                    "clamd": flow.clamd.process.pid, **stack.pids}
            cpu_before = {n: cpu_seconds(p) + cpu_seconds(p, children=True) for n, p in pids.items()}
            busy_before, total_before = machine_busy_seconds()
            bench_cpu = time.process_time()
            sampler = _Sampler(flow)
            sampler.start()
            started = time.time()
            lateness = asyncio.run(_post_all(flow.webhook.health_url.rsplit("/", 1)[0], uploads, rate))
            stream_ended = time.time()
            acked = {u.guid for u in uploads if u.acknowledged}

            def reported() -> set[str]:
                return {c.guid.lower() for c in flow.sim.calls(method="PUT") if 200 <= c.status < 300}

            drained = True
            try:
                wait_until(lambda: acked <= reported(), timeout=drain, what="every acknowledged upload reported",
                           interval=1.0)
            except TimeoutError:
                drained = False
            finished = time.time()
            sampler.stop.set()
            sampler.join(5)
            busy_after, total_after = machine_busy_seconds()
            cpu = {n: cpu_seconds(p) + cpu_seconds(p, children=True) - cpu_before[n] for n, p in pids.items()}
            cpu["bench (this process)"] = time.process_time() - bench_cpu
            rss = {"webhook": peak_rss_mib(pids["webhook"]), "operator": peak_rss_mib(pids["operator"])}
            time.sleep(2.0)  # the operator's Done patches follow their PUTs
            stored = {f["spec"]["guid"].lower(): f for f in flow.filescans()}
            calls = flow.sim.calls()
    print(f"{load_average()} after the run")

    # ---- the ledger -------------------------------------------------------------------------
    by_guid: dict[str, list[Call]] = {}
    for call in calls:
        if 200 <= call.status < 300:
            by_guid.setdefault(call.guid.lower(), []).append(call)
    right = wrong = 0
    put_time: dict[str, float] = {}
    for upload in uploads:
        ok = by_guid.get(upload.guid, [])
        path = f"/api/v2/{upload.source}/attachments/{upload.guid}"
        wrong += sum(1 for c in ok if c.method != "PUT" or c.body != {"status": upload.expected} or c.path != path)
        if ok and ok[-1].method == "PUT" and ok[-1].body == {"status": upload.expected} and ok[-1].path == path:
            right += 1
            put_time[upload.guid] = ok[0].time
    acked_uploads = [u for u in uploads if u.acknowledged]
    lost = sum(1 for u in acked_uploads if u.guid not in put_time)
    first_try = Counter(u.statuses[0] if u.statuses else -1 for u in uploads)
    print(f"ledger: sent {len(uploads)}, acknowledged 2xx {len(acked_uploads)} (first answers {dict(first_try)}), "
          f"FileScans stored {len(set(stored) & {u.guid for u in uploads})}, final Comm100 calls right {right}, "
          f"wrong calls {wrong}, lost {lost}{'' if drained else ' (drain timed out: see backlog)'}")

    # ---- throughput and latency ---------------------------------------------------------------
    latencies = [put_time[u.guid] - u.sent for u in uploads if u.guid in put_time]
    last = max(put_time.values(), default=finished)
    during = [d for t, d in sampler.samples if t <= stream_ended]
    warm = [s for s in sampler.samples if started + min(30.0, seconds / 3) <= s[0] <= stream_ended]
    steady = (warm[-1][1] - warm[0][1]) / (warm[-1][0] - warm[0][0]) if len(warm) >= 2 else float("nan")
    print(f"stream: {len(uploads) / (stream_ended - started):.1f} uploads/s sent over {stream_ended - started:.0f} s "
          f"(latest send {lateness * 1000:.0f} ms behind schedule)")
    print(f"reports: {len(put_time)} in {last - started:.0f} s = {len(put_time) / (last - started):.2f}/s overall; "
          f"{steady:.2f}/s while streaming (after the first {min(30.0, seconds / 3):.0f} s); "
          f"backlog when the stream stopped {len(acked_uploads) - (during[-1] if during else 0)}")
    if latencies:
        print(f"upload → report: p50 {percentile(latencies, 0.5):.1f} s, p99 {percentile(latencies, 0.99):.1f} s, "
              f"max {max(latencies):.1f} s, mean {statistics.fmean(latencies):.1f} s")
    print(f"peak RSS: webhook {rss['webhook']:.1f} MiB, operator {rss['operator']:.1f} MiB")
    busy = (busy_after - busy_before) / max(1e-9, total_after - total_before)
    print(f"machine busy {busy * 100:.0f}% of {os.cpu_count()} cores; CPU seconds: "
          + ", ".join(f"{n} {s:.1f}" for n, s in sorted(cpu.items(), key=lambda kv: -kv[1])))
    print(f"  per report: {sum(cpu.values()) / max(1, len(put_time)):.2f} CPU s, of which the pod runner and "
          f"its scan processes {cpu['pod-runner'] / max(1, len(put_time)):.2f}")
