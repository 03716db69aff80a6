"""What the end-to-end benchmarks share: a devstack, the machine's description, percentiles, and
creating FileScans straight through the API with per-object timing."""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from devstack.cluster import Devstack
from devstack.flow import wait_until

BENCH_AGENT = "filescan-bench"
"""The User-Agent of the benchmarks' own API requests, so the audit log never counts them as ours."""


@contextlib.contextmanager
def devstack(*, audit: bool) -> Iterator[Devstack]:
    """A fresh stack in a temporary directory, or the one in ``FILESCAN_TEST_DEVSTACK_DIR`` when it
    has the audit log this benchmark needs (or needs none)."""
    existing = os.environ.get("FILESCAN_TEST_DEVSTACK_DIR")
    if existing:
        stack = Devstack.load(Path(existing))
        if stack.audit or not audit:
            yield stack
            return
    with tempfile.TemporaryDirectory(prefix="bench-devstack-") as directory:
        stack = Devstack.up(Path(directory), audit=audit)
        try:
            yield stack
        finally:
            stack.down()


@contextlib.contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    """``BENCH_WORKDIR`` (kept afterwards, with the programs' logs) or a temporary directory."""
    kept = os.environ.get("BENCH_WORKDIR")
    if kept:
        path = Path(kept) / f"{prefix}{time.strftime('%H%M%S')}"
        path.mkdir(parents=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as directory:
        yield Path(directory)


def fresh_namespace(stack: Devstack, prefix: str) -> str:
    """A new namespace whose default ServiceAccount exists (pods are refused without it)."""
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    stack.kubectl("create", "namespace", name)
    wait_until(lambda: stack.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0,
               timeout=30, what=f"the default ServiceAccount in {name}", interval=0.2)
    return name


def machine() -> str:
    memory = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kib / 1024 / 1024:.0f} GiB"
    distro = ""
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                distro = ", " + line.split("=", 1)[1].strip('"')
    return f"{os.cpu_count()} cores{memory}{distro}, Python {platform.python_version()}"


def load_average() -> str:
    return "load average " + " ".join(Path("/proc/loadavg").read_text().split()[:3])


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def filescan_manifest(namespace: str, url: str, *, source: str, guid: str, name: str, size: int) -> dict[str, Any]:
    """A FileScan as the webhook would store it for a ``fileUploaded`` event."""
    spec: dict[str, Any] = {
        "source": source, "event": "fileUploaded", "eventId": f"evt-{guid}", "guid": guid,
        "fileName": name, "fileExtension": name.rsplit(".", 1)[-1], "fileSize": size, "fileURL": url,
        "fileLocalPath": "",
    }
    spec["ticketId" if source == "ticket" else "chatId"] = 42
    return {"apiVersion": "comm100.io/v1alpha1", "kind": "FileScan",
            "metadata": {"name": f"{source}-{guid}", "namespace": namespace}, "spec": spec}


def create_filescans(stack: Devstack, manifests: Sequence[dict[str, Any]], *,
                     concurrency: int = 16) -> dict[str, float]:
    """Create FileScans straight through the API, ``concurrency`` at a time, as a burst of uploads
    through the webhook would; returns each one's name → ``time.time()`` when its create answered."""

    async def run() -> dict[str, float]:
        answered: dict[str, float] = {}
        gate = asyncio.Semaphore(concurrency)
        limits = httpx.Limits(max_connections=concurrency)
        async with httpx.AsyncClient(verify=stack.ssl_context(), limits=limits, timeout=30,
                                     headers={"User-Agent": BENCH_AGENT}) as client:
            async def create(manifest: dict[str, Any]) -> None:
                namespace = manifest["metadata"]["namespace"]
                url = f"{stack.server}/apis/comm100.io/v1alpha1/namespaces/{namespace}/filescans"
                async with gate:
                    response = await client.post(url, json=manifest)
                answered[manifest["metadata"]["name"]] = time.time()
                if response.status_code != 201:
                    raise RuntimeError(f"creating {manifest['metadata']['name']}: {response.status_code} "
                                       f"{response.text[:300]}")

            await asyncio.gather(*(create(m) for m in manifests))
        return answered

    return asyncio.run(run())
