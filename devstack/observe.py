"""Watching the stack work, for tests and benchmarks: a Job watch, the apiserver's audit log, and
a process's peak memory.

Design decisions:

* :class:`JobWatcher` and :class:`FileScanWatcher` watch rather than poll: a watch sees every
  state change in order, so no short peak of unfinished Jobs is missed between two polls, and each
  change gets this machine's clock (the API's timestamps have one-second resolution). They list
  first, so objects that exist already are counted, and ``__enter__`` returns only once the watch
  is open, so nothing created afterwards can slip past. When the apiserver ends a watch, it resumes
  from the last resourceVersion seen.
* Requests are attributed by ``userAgent``, not by user: our programs authenticate with the same
  admin credentials as kubectl and the bench itself, but each HTTP client names itself.
* Only ``ResponseComplete`` audit entries are counted (one per request; the policy omits
  ``RequestReceived``, and a watch that the server ends logs only this stage too).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import httpx

from devstack.cluster import Devstack

WATCH_SECONDS = 240
"""How long one watch request may last before the server ends it and we resume."""


def job_finished(job: Mapping[str, Any]) -> bool:
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
               for c in (job.get("status") or {}).get("conditions") or [])


class _Watcher:
    """Lists then watches one kind of object in a namespace, calling :meth:`_observe` for each change."""

    def __init__(self, cluster: Devstack, path: str, *, ready_timeout: float = 15.0) -> None:
        self._url = f"{cluster.server}{path}"
        self._tls = cluster.ssl_context()
        self._ready_timeout = ready_timeout
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"watch {path}")

    def __enter__(self) -> Self:
        self._thread.start()
        if not self._ready.wait(self._ready_timeout):
            raise TimeoutError(f"the watch at {self._url} did not open within {self._ready_timeout}s")
        if self.error is not None:
            raise RuntimeError(f"the watch at {self._url} failed: {self.error}") from self.error
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _observe(self, obj: Mapping[str, Any], deleted: bool) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        try:
            with httpx.Client(verify=self._tls, timeout=httpx.Timeout(5, read=WATCH_SECONDS + 30)) as client:
                listed = client.get(self._url)
                listed.raise_for_status()
                for item in listed.json()["items"]:
                    self._observe(item, False)
                version = listed.json()["metadata"]["resourceVersion"]
                while not self._stop.is_set():
                    params = {"watch": "1", "resourceVersion": version, "allowWatchBookmarks": "true",
                              "timeoutSeconds": str(WATCH_SECONDS)}
                    with client.stream("GET", self._url, params=params) as response:
                        response.raise_for_status()
                        self._ready.set()
                        for line in response.iter_lines():
                            if self._stop.is_set():
                                return
                            if not line:
                                continue
                            event = json.loads(line)
                            obj = event["object"]
                            if event["type"] == "ERROR":
                                raise RuntimeError(f"watch error: {obj.get('message')}")
                            version = obj["metadata"].get("resourceVersion", version)
                            if event["type"] != "BOOKMARK":
                                self._observe(obj, event["type"] == "DELETED")
        except Exception as error:  # reported by __enter__, or read by the caller afterwards
            self.error = error
            self._ready.set()


class JobWatcher(_Watcher):
    """Watches the Jobs of a namespace: the most that were ever unfinished at once, and when each
    was first seen and first seen finished (``time.time()`` of this process)."""

    def __init__(self, cluster: Devstack, namespace: str, *, ready_timeout: float = 15.0) -> None:
        super().__init__(cluster, f"/apis/batch/v1/namespaces/{namespace}/jobs", ready_timeout=ready_timeout)
        self.unfinished: set[str] = set()
        self.seen: set[str] = set()
        self.added_at: dict[str, float] = {}
        self.finished_at: dict[str, float] = {}
        self.peak = 0

    def _observe(self, obj: Mapping[str, Any], deleted: bool) -> None:
        now = time.time()
        name = obj["metadata"]["name"]
        self.seen.add(name)
        self.added_at.setdefault(name, now)
        if deleted or job_finished(obj):
            self.unfinished.discard(name)
            if not deleted:
                self.finished_at.setdefault(name, now)
        else:
            self.unfinished.add(name)
        self.peak = max(self.peak, len(self.unfinished))


class FileScanWatcher(_Watcher):
    """Watches the FileScans of a namespace: when each was first seen in a finished phase."""

    def __init__(self, cluster: Devstack, namespace: str, *, ready_timeout: float = 15.0) -> None:
        super().__init__(cluster, f"/apis/comm100.io/v1alpha1/namespaces/{namespace}/filescans",
                         ready_timeout=ready_timeout)
        self.finished_at: dict[str, float] = {}
        self.phases: dict[str, str] = {}

    def _observe(self, obj: Mapping[str, Any], deleted: bool) -> None:
        name = obj["metadata"]["name"]
        phase = (obj.get("status") or {}).get("phase", "")
        self.phases[name] = phase
        if phase in ("Done", "Failed"):
            self.finished_at.setdefault(name, time.time())


@dataclass(frozen=True)
class AuditEntry:
    """The fields of one audit event that say who asked for what."""

    agent: str
    verb: str
    resource: str
    """``resource`` or ``resource/subresource``; the request path when there is no object."""
    namespace: str
    code: int
    received: float
    """``requestReceivedTimestamp`` as epoch seconds (microsecond resolution)."""


def _epoch(value: str) -> float:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def read_audit(path: Path, *, since: float = 0.0, until: float = float("inf")) -> list[AuditEntry]:
    """Completed requests received in ``[since, until]`` (epoch seconds) from a JSON-lines audit log."""
    entries = []
    with path.open(encoding="utf-8") as log:
        for line in log:
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line still being written
            if event.get("stage") != "ResponseComplete":
                continue
            received = _epoch(event["requestReceivedTimestamp"])
            if not since <= received <= until:
                continue
            ref = event.get("objectRef") or {}
            resource = ref.get("resource") or event.get("requestURI", "").split("?")[0]
            if ref.get("subresource"):
                resource += "/" + ref["subresource"]
            entries.append(AuditEntry(
                agent=event.get("userAgent", ""), verb=event.get("verb", ""), resource=resource,
                namespace=ref.get("namespace", ""), code=int((event.get("responseStatus") or {}).get("code", 0)),
                received=received,
            ))
    return entries


def count_by(entries: Iterable[AuditEntry], *, agents: tuple[str, ...], key: str = "verb") -> Counter[str]:
    """How many of ``entries`` came from a user agent starting with one of ``agents``, by ``key``."""
    return Counter(str(getattr(e, key)) for e in entries if e.agent.startswith(agents))


def peak_rss_mib(pid: int) -> float:
    """A live process's peak resident set (``VmHWM``) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no VmHWM for pid {pid}")


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """User + system CPU seconds of a live process; with ``children``, of the children it has reaped."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    first = 13 if children else 11  # utime, stime, cutime, cstime are fields 14-17 of stat(5)
    return (int(fields[first]) + int(fields[first + 1])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores, from ``/proc/stat``."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(values) - idle) / tick, sum(values) / tick
