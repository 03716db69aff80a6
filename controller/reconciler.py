"""The operator's state machine: FileScan → scan Job → verdict → Comm100 → conditions.

Design decisions:

* Level-triggered. Every decision is derived from the FileScan's ``status.phase`` and the state
  of its Jobs, never from the event that woke us, so a restarted operator finishes whatever it
  finds exactly once. Jobs are named per attempt (``<filescan>-a<n>``); creating one that exists
  adopts it, so no attempt ever runs twice.
* One admission loop owns the concurrency limit, instead of a timer per object: it counts
  *unfinished* Jobs (finished ones never hold a slot), plus Jobs it created that the watch has not
  shown yet, and admits the oldest waiting FileScans as slots free. It is woken whenever a Job
  finishes or a FileScan arrives, so nothing waits on a fixed period.
* A keyed work queue (one worker per FileScan at a time, deduplicated, with delayed re-adds)
  carries everything else: reading verdicts, reporting to Comm100 with retries, retention.
* Caches are fed by kopf's watch events and seeded by a full list at start-up, before the
  admission loop runs, so a restarted operator never over-admits. Every status write is a merge
  patch whose answer replaces the cached copy, so the next decision sees our own writes.
* Write budget: a clean file costs our processes at most six writes (the webhook's create, the
  Job, Queued when it had to wait, Scanning, Done, one Event). Events are posted for the start of
  a scan only when nothing else shows it, and always for the outcome and for every warning.
* Fail closed: only a ``clean`` verdict read from a finished Job's termination message leads to
  ``available`` (or a policy setting chosen explicitly for errors and skipped files).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import heapq
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from controller import builders, policy
from controller.comm100 import Comm100Client, Comm100Error, Comm100NotFoundError, RetryPolicy
from controller.kube import AlreadyExists, KubeClient, KubeConflict, KubeError, KubeNotFound
from controller.settings import Settings

log = logging.getLogger("filescan.operator")

JSON = dict[str, Any]

SCANS = Counter("filescan_scans_total", "Finished FileScans by verdict", ["verdict"])
SCAN_DURATION = Histogram(
    "filescan_scan_duration_seconds", "From scan Job creation to its verdict",
    buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600),
)
UPLOAD_TO_REPORT = Histogram(
    "filescan_upload_to_report_seconds",
    "From the upload (eventTime, else the FileScan's creation) to Comm100's acknowledgement",
    buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600),
)
ACTIVE = Gauge("filescan_active_scans", "Unfinished scan Jobs")
QUEUED = Gauge("filescan_queued_scans", "FileScans waiting for a scan slot")

REPORT_RETRY = RetryPolicy(max_attempts=3, max_elapsed=15.0, base_delay=0.5, max_delay=5.0)
"""Inline retries for one Comm100 call; past this the FileScan is requeued with the error's delay."""

QUEUED_MARK_DELAY = 1.0
"""Seconds a new FileScan may wait for a slot before it is marked ``Queued``."""

WAITING_PHASES = ("", "Queued")
FINISHED_PHASES = ("Done", "Failed")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def _rv(obj: Mapping[str, Any]) -> int:
    try:
        return int(obj["metadata"]["resourceVersion"])
    except (KeyError, ValueError, TypeError):
        return 0


class WorkQueue:
    """Keys to reconcile: deduplicated, each processed by one worker at a time, optionally delayed."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._ready: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._processing: set[str] = set()
        self._dirty: set[str] = set()
        self._delayed: list[tuple[float, str]] = []
        self._delayed_changed = asyncio.Event()

    def add(self, key: str, delay: float = 0.0) -> None:
        if delay > 0:
            heapq.heappush(self._delayed, (self._clock() + delay, key))
            self._delayed_changed.set()
            return
        if key in self._processing:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._ready.put_nowait(key)

    async def get(self) -> str:
        key = await self._ready.get()
        self._queued.discard(key)
        self._processing.add(key)
        return key

    def done(self, key: str) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)

    async def run_delays(self) -> None:
        while True:
            now = self._clock()
            while self._delayed and self._delayed[0][0] <= now:
                self.add(heapq.heappop(self._delayed)[1])
            timeout = self._delayed[0][0] - now if self._delayed else None
            self._delayed_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._delayed_changed.wait(), timeout)


@dataclass
class Reconciler:
    """Owns the caches, the admission loop and the workers for one namespace."""

    settings: Settings
    kube: KubeClient
    comm100: Comm100Client
    workers: int = 16
    clock: Callable[[], dt.datetime] = utcnow
    gate: Callable[[], bool] = lambda: True
    """False while another replica is active (peering): this one then admits and reports nothing."""
    filescans: dict[str, JSON] = field(default_factory=dict)
    jobs: dict[str, JSON] = field(default_factory=dict)
    _pending_jobs: dict[str, float] = field(default_factory=dict)
    _queue: WorkQueue = field(default_factory=WorkQueue)
    _admission: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _background: set[asyncio.Task[None]] = field(default_factory=set)
    _marking_queued: set[str] = field(default_factory=set)
    _first_seen: dict[str, float] = field(default_factory=dict)

    @property
    def namespace(self) -> str:
        return self.settings.operator.namespace

    # ---- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Seed the caches from a full list, then start the loops."""
        for item in await self.kube.list_jobs(self.namespace, self._job_selector()):
            self.jobs[item["metadata"]["name"]] = item
        for item in await self.kube.list_filescans(self.namespace):
            self.observe_filescan(item)
        self._admission.set()
        loops: list[Callable[[], Coroutine[Any, Any, None]]] = [self._queue.run_delays, self._admission_loop,
                                                        self._retention_loop]
        loops += [self._worker] * self.workers
        self._tasks = [asyncio.create_task(loop()) for loop in loops]

    async def stop(self) -> None:
        for task in [*self._tasks, *self._background]:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []

    @staticmethod
    def _job_selector() -> str:
        return ",".join(f"{k}={v}" for k, v in builders.APP_LABELS.items())

    # ---- observations (kopf's watch events) ----------------------------------------------------
    def observe_filescan(self, body: Mapping[str, Any], deleted: bool = False) -> None:
        name = body["metadata"]["name"]
        if deleted:
            self.filescans.pop(name, None)
            self._first_seen.pop(name, None)
            self._admission.set()
            return
        current = self.filescans.get(name)
        if current is not None and _rv(current) > _rv(body):
            return  # older than what we wrote ourselves
        self.filescans[name] = dict(body)
        phase = body.get("status", {}).get("phase", "")
        if phase:
            self._first_seen.pop(name, None)
        else:
            self._first_seen.setdefault(name, time.monotonic())
        if phase in WAITING_PHASES:
            self._admission.set()
        self._queue.add(name)

    def observe_job(self, body: Mapping[str, Any], deleted: bool = False) -> None:
        name = body["metadata"]["name"]
        self._pending_jobs.pop(name, None)
        if deleted:
            self.jobs.pop(name, None)
        else:
            current = self.jobs.get(name)
            if current is not None and _rv(current) > _rv(body):
                return
            self.jobs[name] = dict(body)
        if deleted or policy.job_finished(body):
            self._admission.set()
        owner = body["metadata"].get("labels", {}).get(builders.FILESCAN_LABEL)
        if owner:
            self._queue.add(owner)

    # ---- admission ---------------------------------------------------------------------------
    def unfinished_jobs(self) -> int:
        horizon = time.monotonic() - 120
        for name, created in list(self._pending_jobs.items()):
            if created < horizon:  # never seen by the watch: the Job is gone
                self._pending_jobs.pop(name)
        running = {n for n, j in self.jobs.items() if not policy.job_finished(j)}
        return len(running | set(self._pending_jobs))

    def waiting(self, now: dt.datetime) -> tuple[list[JSON], dt.datetime | None]:
        """FileScans ready for a slot, oldest first, and when the next backed-off one is due."""
        ready: list[JSON] = []
        next_due: dt.datetime | None = None
        for fs in self.filescans.values():
            status = fs.get("status") or {}
            if status.get("phase", "") not in WAITING_PHASES or fs["metadata"].get("deletionTimestamp"):
                continue
            if policy.skip_reason(fs["spec"], self.settings.policy, self.settings.fetch):
                continue  # the worker reports these without a Job
            due = parse_time(status.get("nextAttemptAt"))
            if due and due > now:
                next_due = due if next_due is None else min(next_due, due)
                continue
            ready.append(fs)
        ready.sort(key=lambda f: (f.get("status", {}).get("queuedAt") or f["metadata"]["creationTimestamp"],
                                  f["metadata"]["name"]))
        return ready, next_due

    async def _admission_loop(self) -> None:
        while True:
            timeout: float | None = None
            if not self.gate():
                await asyncio.sleep(1.0)
                continue
            try:
                timeout = await self.admit_queued_scans()
            except Exception:
                log.exception("admission round failed; retrying")
                timeout = 1.0
            self._admission.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._admission.wait(), timeout)

    async def admit_queued_scans(self) -> float | None:
        """Create Jobs for the oldest waiting FileScans while slots are free; mark the rest Queued.

        Admitted Jobs are created concurrently, and the ``Queued`` marks are written in the
        background: a burst of hundreds of them must not hold up the next admission (the operator
        benchmark measured seconds of admission lag when they were written in line).
        Returns how long to sleep at most before the next round (a backed-off attempt falls due).
        """
        now = self.clock()
        ready, next_due = self.waiting(now)
        if self.settings.job.kueue_queue_name:
            slots = len(ready)  # Jobs are created suspended and Kueue decides when each one runs
        else:
            slots = max(0, self.settings.operator.max_concurrent_scans - self.unfinished_jobs())
        chosen = ready[:slots]
        results = await asyncio.gather(*(self._admit(fs, now) for fs in chosen), return_exceptions=True)
        admitted = set()
        for fs, result in zip(chosen, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, KubeError):
                    raise result
                log.warning("could not start a scan for %s: %s", fs["metadata"]["name"], result)
            else:
                admitted.add(fs["metadata"]["name"])
        # Mark only FileScans that have waited a moment: most of a small burst is admitted
        # within it, and a mark it would overtake is a wasted (refused) write.
        seen_now = time.monotonic()
        unmarked, next_mark = [], None
        for fs in ready:
            name = fs["metadata"]["name"]
            if name in admitted or (fs.get("status") or {}).get("phase") or name in self._marking_queued:
                continue
            waited = seen_now - self._first_seen.setdefault(name, seen_now)
            if waited >= QUEUED_MARK_DELAY:
                unmarked.append(fs)
            else:
                left = QUEUED_MARK_DELAY - waited
                next_mark = left if next_mark is None else min(next_mark, left)
        if unmarked:
            self._marking_queued.update(fs["metadata"]["name"] for fs in unmarked)
            task = asyncio.create_task(self._mark_queued(unmarked, now))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        ACTIVE.set(self.unfinished_jobs())
        QUEUED.set(max(0, len(ready) - len(admitted)))
        waits = [w for w in (next_mark, (next_due - now).total_seconds() if next_due else None) if w is not None]
        return max(0.05, min(waits)) if waits else None

    async def _mark_queued(self, waiting: list[JSON], now: dt.datetime) -> None:
        """Show ``Queued`` on FileScans that wait for a slot, unless something moved them on first."""

        async def mark(fs: JSON) -> None:
            name = fs["metadata"]["name"]
            try:
                updated = await self.kube.patch_filescan_status(
                    self.namespace, name,
                    {"phase": "Queued", "queuedAt": builders.format_time(now),
                     "observedGeneration": fs["metadata"].get("generation", 1)},
                    resource_version=fs["metadata"]["resourceVersion"],
                )
                self.observe_filescan(updated)
            except KubeConflict:
                pass  # admitted (or deleted) meanwhile: that write wins, as it should
            except KubeError as error:
                log.warning("could not mark %s Queued: %s", name, error)
            finally:
                self._marking_queued.discard(name)

        await asyncio.gather(*(mark(fs) for fs in waiting))

    async def _admit(self, fs: JSON, now: dt.datetime) -> None:
        status = fs.get("status") or {}
        attempt = int(status.get("attempts") or 0) + 1
        job = builders.build_scan_job(fs, attempt, self.settings.job, self.settings.scanner, self.settings.fetch)
        job["metadata"]["ownerReferences"] = [builders.owner_reference(fs)]
        name = job["metadata"]["name"]
        self._pending_jobs[name] = time.monotonic()
        try:
            result = await self.kube.create_job(self.namespace, job)
        except KubeError:
            self._pending_jobs.pop(name, None)
            raise
        adopted = isinstance(result, AlreadyExists)
        patch: JSON = {
            "phase": "Scanning", "attempts": attempt, "jobName": name,
            "startedAt": builders.format_time(now), "nextAttemptAt": None,
            "queuedAt": status.get("queuedAt") or fs["metadata"]["creationTimestamp"],
            "observedGeneration": fs["metadata"].get("generation", 1),
            "message": f"scan attempt {attempt} running in Job {name}",
        }
        await self._patch_status(fs, patch)
        log.info("admitted %s: Job %s%s", fs["metadata"]["name"], name, " (adopted)" if adopted else "")

    # ---- workers -----------------------------------------------------------------------------
    async def _worker(self) -> None:
        while True:
            name = await self._queue.get()
            if not self.gate():
                self._queue.add(name, 1.0)
                self._queue.done(name)
                continue
            try:
                delay = await self.reconcile(name)
                if delay is not None:
                    self._queue.add(name, delay)
            except KubeNotFound:
                pass  # deleted under us; the watch will tell the cache
            except (KubeError, Comm100Error) as error:
                log.warning("reconcile %s failed, retrying: %s", name, error)
                self._queue.add(name, 2.0)
            except Exception:
                log.exception("reconcile %s crashed, retrying", name)
                self._queue.add(name, 5.0)
            finally:
                self._queue.done(name)

    async def reconcile(self, name: str) -> float | None:
        """Take one FileScan one step further; returns seconds until it wants another look."""
        fs = self.filescans.get(name)
        if fs is None or fs["metadata"].get("deletionTimestamp"):
            return None
        status = fs.get("status") or {}
        phase = status.get("phase", "")
        now = self.clock()
        if phase in WAITING_PHASES:
            skip = policy.skip_reason(fs["spec"], self.settings.policy, self.settings.fetch)
            if skip is not None:
                return await self._report(fs, {"verdict": "skipped", "message": skip.message}, skip.reason)
            self._admission.set()
            return None
        if phase == "Scanning":
            return await self._check_scan(fs, now)
        if phase == "Reporting":
            scanned: JSON = next((c for c in status.get("conditions") or [] if c.get("type") == "Scanned"), {})
            return await self._report(
                fs, {"verdict": status.get("verdict") or "error", "message": scanned.get("message")},
                status.get("scanReason") or scanned.get("reason") or "Scanned",
            )
        if phase in FINISHED_PHASES:
            return await self._retain(fs, now)
        return None

    async def _check_scan(self, fs: JSON, now: dt.datetime) -> float | None:
        status = fs.get("status") or {}
        job_name = status.get("jobName") or ""
        job = self.jobs.get(job_name)
        if job is None:
            if job_name in self._pending_jobs:
                return 1.0
            try:
                job = await self.kube.get_job(self.namespace, job_name)
                self.jobs[job_name] = job
            except KubeNotFound:
                outcome = policy.ScanFailed(
                    "JobLost", f"the scan Job {job_name} disappeared before it finished", permanent=False
                )
                return await self._after_failure(fs, outcome, now)
        if policy.job_finished(job) is None:
            return None  # the Job's next watch event brings us back
        pods = await self.kube.list_pods(self.namespace, f"job-name={job_name}")
        result = policy.read_outcome(job, pods)
        if result is None:
            return None
        if isinstance(result, policy.ScanFailed):
            return await self._after_failure(fs, result, now)
        started = parse_time(status.get("startedAt"))
        if started:
            SCAN_DURATION.observe(max(0.0, (now - started).total_seconds()))
        scanned: JSON = {
            "verdict": result.verdict, "signature": result.signature, "sha256": result.sha256,
            "bytes": result.bytes, "engine": result.engine, "scannedAt": builders.format_time(now),
        }
        reason = "Infected" if result.verdict == "infected" else "Clean"
        return await self._report(fs, scanned, reason)

    async def _after_failure(self, fs: JSON, failure: policy.ScanFailed, now: dt.datetime) -> float | None:
        status = fs.get("status") or {}
        attempts = int(status.get("attempts") or 0)
        if failure.permanent or attempts >= self.settings.operator.max_attempts:
            why = "permanent error" if failure.permanent else f"{attempts} failed attempts"
            await self._event(fs, "Warning", "ScanFailed", f"no verdict after {why}: {failure.message}")
            return await self._report(
                fs, {"verdict": "error", "message": failure.message, "scannedAt": builders.format_time(now)},
                failure.reason,
            )
        delay = policy.retry_delay(attempts)
        due = now + delay
        await self._event(fs, "Warning", "ScanRetry",
                          f"attempt {attempts} failed ({failure.reason}: {failure.message}); "
                          f"retrying in {int(delay.total_seconds())}s")
        conditions = builders.with_condition(
            status.get("conditions"), "Scanned", False, failure.reason,
            f"attempt {attempts} of {self.settings.operator.max_attempts} failed: {failure.message}", now,
        )
        await self._patch_status(fs, {"phase": "Queued", "nextAttemptAt": builders.format_time(due),
                                      "message": failure.message[:4000], "conditions": conditions})
        self._admission.set()
        return None

    async def _report(self, fs: JSON, scanned: JSON, scan_reason: str) -> float | None:
        """Tell Comm100 what the verdict means; mark Done, or keep Reporting and say why."""
        status = fs.get("status") or {}
        now = self.clock()
        verdict: policy.Verdict = scanned["verdict"]
        action = policy.report_action(verdict, self.settings.policy)
        source, guid = fs["spec"]["source"], fs["spec"]["guid"]
        scan_message = scanned.get("message") or _verdict_message(scanned)
        conditions = builders.with_condition(status.get("conditions"), "Scanned", verdict in ("clean", "infected"),
                                             scan_reason, scan_message, now)
        base: JSON = {k: v for k, v in scanned.items() if k != "message" and v is not None}
        try:
            if action == "delete":
                try:
                    result = await self.comm100.delete(source, guid, retry=REPORT_RETRY)
                    reported = "deleted"
                except Comm100NotFoundError:
                    reported = "deleted"  # a repeated DELETE after one that took effect
                    result = None
            else:
                result = await self.comm100.report(source, guid, action == "available", retry=REPORT_RETRY)
                reported = _reported_status(result.body) if result else action
        except Comm100NotFoundError as error:
            conditions = builders.with_condition(conditions, "Reported", False, "AttachmentNotFound", str(error), now)
            conditions = builders.with_condition(conditions, "Ready", False, "AttachmentNotFound",
                                                 "Comm100 does not know this attachment; nothing more to do", now)
            await self._patch_status(fs, base | {"phase": "Failed", "finishedAt": builders.format_time(now),
                                                 "conditions": conditions, "message": str(error)[:4000]})
            await self._event(fs, "Warning", "AttachmentNotFound", str(error))
            SCANS.labels(verdict=verdict).inc()
            return self._retention_delay(now)
        except Comm100Error as error:
            reason = _comm100_reason(error)
            delay = float(error.suggested_delay or 30.0)
            message = f"{action} not yet reported ({error}); retrying in {delay:.0f}s"
            conditions = builders.with_condition(conditions, "Reported", False, reason, message, now)
            conditions = builders.with_condition(conditions, "Ready", False, reason, message, now)
            previous = next((c for c in status.get("conditions") or [] if c.get("type") == "Reported"), None)
            if status.get("phase") != "Reporting" or not previous or previous.get("reason") != reason:
                await self._patch_status(fs, base | {"phase": "Reporting", "scanReason": scan_reason,
                                                     "conditions": conditions, "message": message[:4000]})
                await self._event(fs, "Warning", "ReportFailed", message)
            return delay
        conditions = builders.with_condition(conditions, "Reported", True, "Reported",
                                             f"Comm100 acknowledged {reported}", now)
        conditions = builders.with_condition(conditions, "Ready", True, "Done",
                                             f"{verdict}: reported {reported} to Comm100", now)
        await self._patch_status(fs, base | {
            "phase": "Done", "reportedStatus": reported, "reportedAt": builders.format_time(now),
            "finishedAt": builders.format_time(now), "conditions": conditions,
            "message": f"{scan_message}; reported {reported}"[:4000],
        })
        await self._event(fs, "Warning" if verdict != "clean" else "Normal", "Reported",
                          f"{scan_message}; reported {reported} to Comm100")
        SCANS.labels(verdict=verdict).inc()
        uploaded = parse_time(fs["spec"].get("eventTime")) or parse_time(fs["metadata"].get("creationTimestamp"))
        if uploaded:
            UPLOAD_TO_REPORT.observe(max(0.0, (now - uploaded).total_seconds()))
        return self._retention_delay(now)

    # ---- retention ---------------------------------------------------------------------------
    def _retention_delay(self, finished: dt.datetime) -> float:
        due = finished + self.settings.operator.retention - self.clock()
        return max(0.0, due.total_seconds()) + 1.0

    async def _retain(self, fs: JSON, now: dt.datetime) -> float | None:
        finished = parse_time((fs.get("status") or {}).get("finishedAt"))
        if finished is None:
            return None
        if finished + self.settings.operator.retention > now:
            return self._retention_delay(finished)
        await self.kube.delete_filescan(self.namespace, fs["metadata"]["name"], uid=fs["metadata"]["uid"])
        log.info("deleted %s after the retention period", fs["metadata"]["name"])
        return None

    async def _retention_loop(self) -> None:
        """A safety net: look at every finished FileScan now and then (the queue is in memory)."""
        period = min(300.0, max(1.0, self.settings.operator.retention.total_seconds() / 10))
        while True:
            await asyncio.sleep(period)
            for name, fs in list(self.filescans.items()):
                if (fs.get("status") or {}).get("phase") in FINISHED_PHASES:
                    self._queue.add(name)

    # ---- writes ------------------------------------------------------------------------------
    async def _patch_status(self, fs: JSON, status: JSON) -> None:
        updated = await self.kube.patch_filescan_status(self.namespace, fs["metadata"]["name"], status)
        self.observe_filescan(updated)

    async def _event(self, fs: JSON, kind: str, reason: str, message: str) -> None:
        try:
            await self.kube.create_event(fs, kind, reason, message, component="filescan-operator")
        except KubeError as error:  # an Event is worth a try, never a retry of the whole step
            log.warning("could not post Event %s on %s: %s", reason, fs["metadata"]["name"], error)


def _verdict_message(scanned: Mapping[str, Any]) -> str:
    verdict = scanned["verdict"]
    if verdict == "infected":
        return f"infected: {scanned.get('signature') or 'unknown signature'}"
    if verdict == "clean":
        engine = scanned.get("engine")
        return f"clean ({engine})" if engine else "clean"
    return str(verdict)


def _reported_status(body: Mapping[str, Any] | None) -> str:
    if not body:
        return "unknown"
    value = body.get("status", body.get("isAvailable"))
    return str(value).lower() if isinstance(value, bool) else str(value)


def _comm100_reason(error: Comm100Error) -> str:
    name = type(error).__name__.removeprefix("Comm100").removesuffix("Error") or "Error"
    return {"Auth": "Unauthorized", "RateLimited": "RateLimited", "Server": "ServerError",
            "Transport": "Unreachable", "Request": "RequestRefused"}.get(name, name)
