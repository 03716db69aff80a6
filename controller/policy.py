"""Pure decisions: whether to scan, what a finished Job says, and what to tell Comm100.

Design decisions:

* Fail closed. A Job that finished without a readable verdict is a failed attempt, never a clean
  one; the only way to ``available`` is a ``clean`` verdict (or an explicit ``on_error`` /
  ``on_skipped`` setting that a platform team chose).
* A permanent failure (the scanner's exit code 3, surfaced by the Job's ``podFailurePolicy``) ends
  the attempts at once; anything else is retried up to ``max_attempts`` with exponential backoff.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from controller.settings import FetchPolicy, PolicySettings

Verdict = Literal["clean", "infected", "error", "skipped"]
ReportAction = Literal["available", "unavailable", "delete"]

RETRY_BASE = dt.timedelta(seconds=5)
RETRY_MAX = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class Skip:
    """Do not scan: report ``skipped`` with this reason."""

    reason: str
    message: str


def skip_reason(spec: Mapping[str, Any], policy: PolicySettings, fetch: FetchPolicy) -> Skip | None:
    """Why this file is not scanned at all, or None when it should be."""
    size = int(spec.get("fileSize", 0))
    if size > fetch.max_file_size:
        return Skip("FileTooLarge", f"{size} bytes is over the {fetch.max_file_size}-byte limit")
    extension = str(spec.get("fileExtension") or "").lower().lstrip(".")
    name = str(spec.get("fileName") or "").lower()
    for blocked in policy.blocked_extensions:
        if extension == blocked or name.endswith("." + blocked):
            return Skip("ExtensionBlocked", f"extension .{blocked} is blocked")
    return None


@dataclass(frozen=True)
class ScanVerdict:
    """The scanner wrote a verdict."""

    verdict: Literal["clean", "infected"]
    signature: str | None
    sha256: str | None
    bytes: int | None
    engine: str | None
    elapsed_ms: int | None


@dataclass(frozen=True)
class ScanFailed:
    """The attempt produced no verdict; ``permanent`` means another attempt would not help."""

    reason: str
    message: str
    permanent: bool


ScanOutcome = ScanVerdict | ScanFailed


def job_finished(job: Mapping[str, Any]) -> str | None:
    """``Complete`` or ``Failed`` once the Job controller has decided, else None."""
    for condition in job.get("status", {}).get("conditions") or []:
        if condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True":
            return str(condition["type"])
    return None


def _terminated(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for status in pod.get("status", {}).get("containerStatuses") or []:
        if status.get("name") == "scanner":
            state = status.get("state", {}).get("terminated")
            return state if isinstance(state, Mapping) else None
    return None


def _message(pod: Mapping[str, Any]) -> dict[str, Any] | None:
    state = _terminated(pod)
    if not state or not state.get("message"):
        return None
    try:
        parsed = json.loads(state["message"])
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def read_outcome(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> ScanOutcome | None:
    """What a finished Job says; None while it is still running."""
    finished = job_finished(job)
    if finished is None:
        return None
    terminated = sorted(
        (p for p in pods if _terminated(p) is not None),
        key=lambda p: str((_terminated(p) or {}).get("finishedAt") or ""),
    )
    if finished == "Complete":
        for pod in reversed(terminated):
            state = _terminated(pod) or {}
            message = _message(pod)
            if state.get("exitCode") == 0 and message and message.get("verdict") in ("clean", "infected"):
                return ScanVerdict(
                    verdict=message["verdict"],
                    signature=_text(message.get("signature"), 1024),
                    sha256=_text(message.get("sha256"), 64),
                    bytes=_int(message.get("bytes")),
                    engine=_text(message.get("engine"), 256),
                    elapsed_ms=_int(message.get("elapsedMs")),
                )
        return ScanFailed("NoVerdict", "the scan Job completed without a readable verdict", permanent=False)
    reason = next(
        (str(c.get("reason") or "") for c in job.get("status", {}).get("conditions") or []
         if c.get("type") == "Failed"),
        "",
    )
    last = _message(terminated[-1]) if terminated else None
    detail = str(last.get("error")) if last and last.get("error") else ""
    if reason == "PodFailurePolicy" or (last is not None and last.get("retryable") is False):
        return ScanFailed("PermanentError", detail or "the scanner reported a permanent error", permanent=True)
    if reason == "DeadlineExceeded":
        return ScanFailed("DeadlineExceeded", "the scan took longer than its deadline", permanent=False)
    return ScanFailed("TransientError", detail or f"the scan Job failed ({reason or 'unknown reason'})",
                      permanent=False)


def _text(value: Any, limit: int) -> str | None:
    return str(value)[:limit] if value not in (None, "") else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def report_action(verdict: Verdict, policy: PolicySettings) -> ReportAction:
    """What Comm100 is told for a verdict."""
    if verdict == "clean":
        return "available"
    if verdict == "infected":
        return "delete" if policy.on_infected == "delete" else "unavailable"
    if verdict == "error":
        return policy.on_error
    return policy.on_skipped


def retry_delay(failed_attempts: int) -> dt.timedelta:
    """Backoff before the next attempt: 5 s, 10 s, 20 s … capped at 5 minutes."""
    seconds = RETRY_BASE.total_seconds() * 2.0 ** max(0, failed_attempts - 1)
    return dt.timedelta(seconds=min(seconds, RETRY_MAX.total_seconds()))


def peering_allows(
    peers: Mapping[str, Any], identity: str, priority: int, now: dt.datetime
) -> bool:
    """Whether kopf's peering record lets this replica act, by kopf's own rule: it must not see
    another live replica of higher or equal priority (equal priorities pause everyone)."""
    for other, info in peers.items():
        if other == identity or not isinstance(info, Mapping):
            continue
        try:
            seen = dt.datetime.fromisoformat(str(info["lastseen"]))
            lifetime = dt.timedelta(seconds=int(info.get("lifetime", 60)))
            other_priority = int(info.get("priority", 0))
        except (KeyError, TypeError, ValueError):
            continue
        if seen.tzinfo is None:
            seen = seen.replace(tzinfo=dt.UTC)
        if seen + lifetime > now and other_priority >= priority:
            return False
    return True
