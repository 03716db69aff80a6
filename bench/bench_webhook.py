"""The webhook's benchmark: how much of the apiserver's own create throughput does it keep?

The same N events (default 2,000, ``FILESCAN_BENCH_EVENTS``) go (a) through ``filescan webhook``
(the installed program, a process of its own, as deployed) at concurrency 32, and (b) straight to
the apiserver as FileScan creates with an async HTTP client at the same concurrency, in the same
run against the same devstack. Each side stores into a namespace of its own, so both create N new
objects. The two are interleaved in halves (webhook, direct, webhook, direct) so that neither
gets the emptier etcd or the quieter machine, after a warm-up of each. Goal: the webhook keeps at
least 0.8 of the direct throughput, with p99 under 50 ms.

The whole comparison runs in two layouts. **Shared**: every process on every core, as this
machine has them. **Apart**: the control plane (etcd, the apiserver, the controller manager and the
pod runner) on the first half of the cores, the webhook and the load generator on the other half,
as in a cluster where the apiserver runs on control-plane nodes and the webhook on workers. The
direct side then measures the apiserver on its share of the machine, and the webhook side whether
the webhook, on an equal share with the load generator beside it, keeps up with that apiserver.
Both layouts print the goal; neither is hidden.

The devstack is started in a temporary directory (without the audit log, which would cost both
sides alike), or reused from ``FILESCAN_TEST_DEVSTACK_DIR``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.common import devstack, machine
from controller.events import filescan_draft, parse_event
from controller.kube import API_VERSION, FILESCAN_KIND, KubeCredentials
from devstack.cluster import Devstack, free_port

REPO = Path(__file__).resolve().parent.parent
CRD = REPO / "manifests" / "crd-filescans.yaml"
FILESCAN = Path(sys.executable).parent / "filescan"
CONCURRENCY = 32
LIGHT_CONCURRENCY = 4
SHARDS = 4
WARMUP = 200
TOKEN = "bench-token-5d0f1c2b9e8a7d6c"
FILE_HOST = "files.comm100.test"


def _events(count: int) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for index in range(count):
        source = "ticket" if index % 2 else "livechat"
        guid = str(uuid.uuid4())
        body = {
            "event": "fileUploaded",
            "eventId": f"bench-{index}",
            ("ticketId" if source == "ticket" else "chatId"): 1000 + index,
            "guid": guid,
            "fileName": f"file-{index}.pdf",
            "fileExtension": "pdf",
            "fileSize": 10_000 + index,
            "fileURL": f"https://{FILE_HOST}/attachments/{guid}?sig=abc",
            "fileLocalPath": f"/data/{guid}.pdf",
        }
        events.append((source, body))
    return events


CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "pod-runner")


@dataclass(frozen=True)
class Layout:
    """Which cores the control plane and the webhook side (webhook + load generator) may use;
    None leaves a side on every core."""

    name: str
    control_plane: frozenset[int] | None
    webhook_side: frozenset[int] | None

    @classmethod
    def shared(cls) -> Layout:
        return cls("shared (every process on every core)", None, None)

    @classmethod
    def apart(cls) -> Layout | None:
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) < 2:
            return None
        half = len(cores) // 2
        return cls(
            f"apart (control plane on cores {_cores(cores[:half])}, webhook and load generator on "
            f"{_cores(cores[half:])})",
            frozenset(cores[:half]),
            frozenset(cores[half:]),
        )


def _cores(cores: list[int]) -> str:
    return ",".join(map(str, cores))


def pin(pid: int, cores: frozenset[int] | None) -> None:
    """Set the CPU affinity of every thread of ``pid`` (Go programs run many; threads they start
    later inherit it). None allows every core again."""
    allowed = cores if cores is not None else frozenset(range(os.cpu_count() or 1))
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError, FileNotFoundError):
            os.sched_setaffinity(int(task.name), allowed)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds used by each process of interest (and this one) between marks."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.used = dict.fromkeys([*pids, "bench client"], 0.0)
        self._start: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        return {name: _cpu_seconds(pid) for name, pid in self.pids.items()} | {"bench client": time.process_time()}

    def start(self) -> None:
        self._start = self._now()

    def stop(self) -> None:
        for name, value in self._now().items():
            self.used[name] += value - self._start[name]


@dataclass
class Run:
    latencies: list[float]
    elapsed: float
    failures: int

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.elapsed

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _drive(
    count: int, send: Callable[[int], Awaitable[bool]], meter: CpuMeter | None = None, concurrency: int = CONCURRENCY
) -> Run:
    """``count`` calls of ``send(i)`` with CONCURRENCY in flight; per-call latency and wall time."""
    latencies: list[float] = []
    failures = 0
    cursor = iter(range(count))

    async def worker() -> None:
        nonlocal failures
        for index in cursor:
            started = time.perf_counter()
            ok = await send(index)
            latencies.append(time.perf_counter() - started)
            failures += not ok

    if meter:
        meter.start()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    if meter:
        meter.stop()
    return Run(latencies, elapsed, failures)


def _merge(runs: list[Run]) -> Run:
    return Run(
        [x for run in runs for x in run.latencies],
        sum(run.elapsed for run in runs),
        sum(run.failures for run in runs),
    )


@contextlib.contextmanager
def _webhook(stack: Devstack, namespace: str, cores: frozenset[int] | None) -> Iterator[tuple[str, int]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FILESCAN_")} | {
        "KUBECONFIG": str(stack.kubeconfig),
        "FILESCAN_NAMESPACE": namespace,
        "FILESCAN_WEBHOOK_TOKENS": TOKEN,
        "FILESCAN_ALLOWED_FILE_HOSTS": FILE_HOST,
    }
    with tempfile.NamedTemporaryFile(prefix="bench-webhook-", suffix=".log", delete=False) as log:
        process = subprocess.Popen(
            [str(FILESCAN), "webhook", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the webhook did not become ready; see {log.name}")
            time.sleep(0.2)
        pin(process.pid, cores)
        yield url, process.pid
    finally:
        process.terminate()
        process.wait(timeout=20)
        Path(log.name).unlink(missing_ok=True)


@dataclass
class Results:
    hook: Run
    direct: Run
    hook_cpu: CpuMeter
    direct_cpu: CpuMeter
    hook_idle: Run
    direct_idle: Run
    hook_light: Run
    direct_light: Run


async def _measure(
    stack: Devstack, webhook_url: str, webhook_pid: int, ns_webhook: str, ns_direct: str, count: int
) -> Results:
    credentials = KubeCredentials.from_environment()
    # Several small pools rather than one of 32: httpx's pool costs grow with the square of its size,
    # and the load generator should spend as little CPU as it can on either side.
    per_shard = CONCURRENCY // SHARDS
    limits = httpx.Limits(max_connections=per_shard, max_keepalive_connections=per_shard)
    idle = min(200, count)
    light = min(1000, count)
    total = count + WARMUP + idle + light
    events = _events(total)
    # The direct side sends what the webhook would store: the same drafts, built up front.
    drafts = [filescan_draft(parse_event(source, body)) for source, body in events]  # type: ignore[arg-type]
    bodies = [
        json.dumps(
            {"apiVersion": API_VERSION, "kind": FILESCAN_KIND, "metadata": {"name": d.name}, "spec": d.spec}
        ).encode()
        for d in drafts
    ]
    event_bodies = [json.dumps(body).encode() for _, body in events]
    async with contextlib.AsyncExitStack() as clients:
        hooks = [
            await clients.enter_async_context(httpx.AsyncClient(base_url=webhook_url, limits=limits, timeout=30))
            for _ in range(SHARDS)
        ]
        apis = [
            await clients.enter_async_context(
                httpx.AsyncClient(
                    base_url=credentials.server, verify=credentials.verify, limits=limits, timeout=30, trust_env=False
                )
            )
            for _ in range(SHARDS)
        ]
        api = apis[0]
        auth = credentials.authorization()
        api_headers = {"Content-Type": "application/json", **({"Authorization": auth} if auth else {})}
        hook_headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
        create_path = f"/apis/{API_VERSION}/namespaces/{ns_direct}/filescans"

        def through_webhook(offset: int) -> Callable[[int], Awaitable[bool]]:
            async def send(index: int) -> bool:
                source = events[offset + index][0]
                answer = await hooks[index % SHARDS].post(
                    f"/webhooks/{source}", content=event_bodies[offset + index], headers=hook_headers
                )
                return answer.status_code == 200 and answer.json()["result"] == "delay"

            return send

        def direct(offset: int) -> Callable[[int], Awaitable[bool]]:
            async def send(index: int) -> bool:
                answer = await apis[index % SHARDS].post(
                    create_path, content=bodies[offset + index], headers=api_headers
                )
                return answer.status_code == 201

            return send

        await _drive(WARMUP, through_webhook(count))
        await _drive(WARMUP, direct(count))
        named = {"apiserver": "kube-apiserver", "etcd": "etcd", "controller manager": "kube-controller-manager"}
        pids = {label: stack.pids[name] for label, name in named.items() if name in stack.pids}
        hook_cpu, direct_cpu = CpuMeter(pids | {"webhook": webhook_pid}), CpuMeter(pids)
        half = count // 2
        hook_runs, direct_runs = [], []
        for offset, size in ((0, half), (half, count - half)):
            hook_runs.append(await _drive(size, through_webhook(offset), hook_cpu))
            direct_runs.append(await _drive(size, direct(offset), direct_cpu))
        # The latency the webhook adds when nothing queues: one event at a time.
        base = count + WARMUP
        hook_idle = await _drive(idle, through_webhook(base), concurrency=1)
        direct_idle = await _drive(idle, direct(base), concurrency=1)
        # And at a lighter load, where the apiserver alone keeps its own p99 well under 50 ms.
        hook_light = await _drive(light, through_webhook(base + idle), concurrency=LIGHT_CONCURRENCY)
        direct_light = await _drive(light, direct(base + idle), concurrency=LIGHT_CONCURRENCY)
        for namespace in (ns_webhook, ns_direct):
            listed = await api.get(f"/apis/{API_VERSION}/namespaces/{namespace}/filescans", headers=api_headers)
            stored = len(listed.json()["items"])
            if stored != total:
                raise RuntimeError(f"{namespace} holds {stored} FileScans, expected {total}")
    return Results(
        _merge(hook_runs), _merge(direct_runs), hook_cpu, direct_cpu, hook_idle, direct_idle, hook_light, direct_light
    )


def _run_layout(stack: Devstack, layout: Layout, count: int) -> Results:
    """One full comparison with the processes pinned as ``layout`` says; pins undone afterwards."""
    suffix = uuid.uuid4().hex[:6]
    ns_webhook, ns_direct = f"bench-webhook-{suffix}", f"bench-direct-{suffix}"
    for namespace in (ns_webhook, ns_direct):
        stack.kubectl("create", "namespace", namespace)
    control_plane = [stack.pids[name] for name in CONTROL_PLANE if name in stack.pids]
    try:
        for pid in control_plane:
            pin(pid, layout.control_plane)
        pin(os.getpid(), layout.webhook_side)
        with _webhook(stack, ns_webhook, layout.webhook_side) as (url, pid):
            return asyncio.run(_measure(stack, url, pid, ns_webhook, ns_direct, count))
    finally:
        for pid in control_plane:
            pin(pid, None)
        pin(os.getpid(), None)
        for namespace in (ns_webhook, ns_direct):
            stack.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def main() -> None:
    count = int(os.environ.get("FILESCAN_BENCH_EVENTS", "2000"))
    layouts = [layout for layout in (Layout.shared(), Layout.apart()) if layout is not None]
    with devstack(audit=False) as stack:
        os.environ["KUBECONFIG"] = str(stack.kubeconfig)
        stack.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
        stack.kubectl("wait", "--for=condition=Established", "crd/filescans.comm100.io", "--timeout=60s")
        results = [(layout, _run_layout(stack, layout, count)) for layout in layouts]

    print(f"{time.strftime('%Y-%m-%d')}, {machine()}")
    print(f"{count} events, concurrency {CONCURRENCY}, after {WARMUP} warm-up events each")
    for layout, result in results:
        _report(layout, result)


def _report(layout: Layout, results: Results) -> None:
    hook, direct = results.hook, results.direct
    print(f"\nlayout: {layout.name}")
    print(f"{'':10} {'events/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'failed':>6}")
    for label, run in (("webhook", hook), ("apiserver", direct)):
        print(
            f"{label:10} {run.rate:9.0f} {run.percentile(0.5) * 1000:7.1f} "
            f"{run.percentile(0.99) * 1000:7.1f} {run.failures:6d}"
        )
    ratio = hook.rate / direct.rate
    p99 = hook.percentile(0.99) * 1000
    print(f"ratio {ratio:.2f} (goal >= 0.80): {'met' if ratio >= 0.8 else 'NOT met'}")
    print(f"webhook p99 {p99:.1f} ms (goal < 50): {'met' if p99 < 50 else 'NOT met'}")
    # Little's law: with CONCURRENCY requests always in flight, the mean latency is CONCURRENCY / rate.
    floor = CONCURRENCY / direct.rate * 1000
    print(
        f"  the apiserver alone: p99 {direct.percentile(0.99) * 1000:.1f} ms; at concurrency {CONCURRENCY} "
        f"its own mean latency is {floor:.1f} ms ({CONCURRENCY} / {direct.rate:.0f} per s), a floor for any front end"
    )
    print("CPU ms per event:")
    for label, meter, runs in (("webhook", results.hook_cpu, hook), ("apiserver", results.direct_cpu, direct)):
        parts = ", ".join(f"{name} {used / len(runs.latencies) * 1000:.2f}" for name, used in meter.used.items())
        print(f"  {label:10} {parts}")
    print(f"one at a time ({len(results.hook_idle.latencies)} events), p50 / p99 ms:")
    for label, run in (("webhook", results.hook_idle), ("apiserver", results.direct_idle)):
        print(f"  {label:10} {run.percentile(0.5) * 1000:.1f} / {run.percentile(0.99) * 1000:.1f}")
    print(f"at concurrency {LIGHT_CONCURRENCY} ({len(results.hook_light.latencies)} events), events/s, p50 / p99 ms:")
    for label, run in (("webhook", results.hook_light), ("apiserver", results.direct_light)):
        print(f"  {label:10} {run.rate:5.0f}, {run.percentile(0.5) * 1000:.1f} / {run.percentile(0.99) * 1000:.1f}")
    print(f"mean latency at concurrency {CONCURRENCY}: webhook {statistics.fmean(hook.latencies) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
