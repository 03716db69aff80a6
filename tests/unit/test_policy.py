"""Pure decisions: what is not scanned, what a finished Job says, what Comm100 is told, retry delays."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from controller.policy import (
    RETRY_MAX,
    ScanFailed,
    ScanVerdict,
    Skip,
    Verdict,
    job_finished,
    read_outcome,
    report_action,
    retry_delay,
    skip_reason,
)
from controller.settings import FetchPolicy, PolicySettings

SHA = "a" * 64


# ---- skip_reason -----------------------------------------------------------------------------


def spec(**fields: Any) -> dict[str, Any]:
    return {"fileName": "report.pdf", "fileExtension": "pdf", "fileSize": 1000} | fields


AS_ENV_GIVES_IT: dict[str, Any] = {"blocked_extensions": "exe, .BAT,iso"}
BLOCKING = PolicySettings(**AS_ENV_GIVES_IT)


@pytest.mark.parametrize(
    ("size", "limit", "skipped"),
    [(1000, 1000, False), (1001, 1000, True), (0, 0, False), (1, 0, True), (2**63 - 1, 100 * 2**20, True)],
)
def test_files_over_the_size_limit_are_skipped(size: int, limit: int, skipped: bool) -> None:
    result = skip_reason(spec(fileSize=size), PolicySettings(), FetchPolicy(max_file_size=limit))
    if skipped:
        assert result is not None and result.reason == "FileTooLarge"
        assert str(size) in result.message and str(limit) in result.message
    else:
        assert result is None


@pytest.mark.parametrize(
    ("name", "extension"),
    [
        ("setup.exe", "exe"),
        ("SETUP.EXE", "EXE"),
        ("run.bat", ".bat"),
        ("image.ISO", ""),  # by the name alone
        ("noext", "Exe"),  # by the extension field alone
        ("archive.tar.exe", "pdf"),  # the name's suffix wins over a lying extension field
        ("x.pdf", ".exe"),
    ],
)
def test_blocked_extensions_are_skipped_case_insensitively(name: str, extension: str) -> None:
    result = skip_reason(spec(fileName=name, fileExtension=extension), BLOCKING, FetchPolicy())
    assert isinstance(result, Skip)
    assert result.reason == "ExtensionBlocked"
    assert result.message.startswith("extension .")


@pytest.mark.parametrize(
    ("name", "extension"),
    [
        ("report.pdf", "pdf"),
        ("exe", ""),  # the name is the extension's word, not a suffix
        ("notes.exe.txt", "txt"),
        ("myexe", ""),
        ("file.exes", "exes"),
        ("file.isobar", ""),
    ],
)
def test_other_extensions_are_scanned(name: str, extension: str) -> None:
    assert skip_reason(spec(fileName=name, fileExtension=extension), BLOCKING, FetchPolicy()) is None


def test_nothing_is_blocked_by_default() -> None:
    assert skip_reason(spec(fileName="setup.exe", fileExtension="exe"), PolicySettings(), FetchPolicy()) is None


def test_size_is_checked_before_extensions() -> None:
    result = skip_reason(spec(fileName="a.exe", fileSize=10), BLOCKING, FetchPolicy(max_file_size=5))
    assert result is not None and result.reason == "FileTooLarge"


# ---- read_outcome ----------------------------------------------------------------------------


def job(finished: str | None = None, reason: str | None = None) -> dict[str, Any]:
    # The Job controller sets SuccessCriteriaMet / FailureTarget first, then Complete / Failed.
    first = {"Complete": "SuccessCriteriaMet", "Failed": "FailureTarget"}.get(finished or "")
    conditions: list[dict[str, Any]] = [{"type": first, "status": "True"}] if first else []
    if finished:
        condition = {"type": finished, "status": "True"}
        if reason:
            condition["reason"] = reason
        conditions.append(condition)
    return {"metadata": {"name": "ticket-x-a1"}, "status": {"conditions": conditions}}


def pod(
    exit_code: int | None,
    message: Any = None,
    finished_at: str = "2025-03-01T12:00:10Z",
    container: str = "scanner",
) -> dict[str, Any]:
    if exit_code is None:
        state: dict[str, Any] = {"running": {"startedAt": "2025-03-01T12:00:00Z"}}
    else:
        terminated: dict[str, Any] = {"exitCode": exit_code, "finishedAt": finished_at}
        if message is not None:
            terminated["message"] = message if isinstance(message, str) else json.dumps(message)
        state = {"terminated": terminated}
    return {"metadata": {"name": f"pod-{finished_at}"},
            "status": {"containerStatuses": [{"name": container, "state": state}]}}


CLEAN = {"verdict": "clean", "signature": None, "sha256": SHA, "bytes": 12345, "engine": "ClamAV 1.4.2/27500",
         "elapsedMs": 42}
INFECTED = {"verdict": "infected", "signature": "Eicar-Signature", "sha256": SHA, "bytes": 68,
            "engine": "ClamAV 1.4.2/27500", "elapsedMs": 7}


@pytest.mark.parametrize(
    "conditions",
    [
        [],
        [{"type": "Suspended", "status": "True"}],
        [{"type": "Complete", "status": "False"}],
        [{"type": "Failed", "status": "False"}],
        [{"type": "FailureTarget", "status": "True"}],  # decided, but pods are still terminating
    ],
)
def test_an_unfinished_job_has_no_outcome(conditions: list[dict[str, Any]]) -> None:
    running = {"status": {"conditions": conditions}}
    assert job_finished(running) is None
    assert read_outcome(running, [pod(0, CLEAN)]) is None
    assert read_outcome({"metadata": {}}, []) is None


def test_a_clean_verdict() -> None:
    outcome = read_outcome(job("Complete"), [pod(0, CLEAN)])
    assert outcome == ScanVerdict(verdict="clean", signature=None, sha256=SHA, bytes=12345,
                                  engine="ClamAV 1.4.2/27500", elapsed_ms=42)


def test_an_infected_verdict() -> None:
    outcome = read_outcome(job("Complete"), [pod(0, INFECTED)])
    assert outcome == ScanVerdict(verdict="infected", signature="Eicar-Signature", sha256=SHA, bytes=68,
                                  engine="ClamAV 1.4.2/27500", elapsed_ms=7)


def test_verdict_fields_are_bounded_and_typed() -> None:
    message = {"verdict": "infected", "signature": "S" * 5000, "sha256": "f" * 100, "bytes": -1,
               "engine": "E" * 300, "elapsedMs": "12"}
    outcome = read_outcome(job("Complete"), [pod(0, message)])
    assert isinstance(outcome, ScanVerdict)
    assert outcome.signature == "S" * 1024
    assert outcome.sha256 == "f" * 64
    assert outcome.bytes is None, "a negative byte count is not kept"
    assert outcome.engine == "E" * 256
    assert outcome.elapsed_ms is None, "a string is not a number"
    flagged = read_outcome(job("Complete"), [pod(0, {**CLEAN, "bytes": True})])
    assert isinstance(flagged, ScanVerdict) and flagged.bytes is None


@pytest.mark.parametrize(
    "pods",
    [
        pytest.param([pod(0)], id="no message"),
        pytest.param([pod(0, "")], id="empty message"),
        pytest.param([pod(0, "{not json")], id="garbage"),
        pytest.param([pod(0, '"clean"')], id="a JSON string"),
        pytest.param([pod(0, "[1, 2]")], id="a JSON list"),
        pytest.param([pod(0, {"verdict": "CLEAN"})], id="unknown verdict"),
        pytest.param([pod(0, {"verdict": "skipped"})], id="not a scanner verdict"),
        pytest.param([pod(0, {"sha256": SHA})], id="no verdict"),
        pytest.param([pod(2, CLEAN)], id="clean message, non-zero exit"),
        pytest.param([pod(0, CLEAN, container="sidecar")], id="another container"),
        pytest.param([pod(None)], id="still running"),
        pytest.param([], id="no pods"),
    ],
)
def test_a_complete_job_without_a_readable_verdict_fails_closed(pods: list[dict[str, Any]]) -> None:
    outcome = read_outcome(job("Complete"), pods)
    assert outcome == ScanFailed("NoVerdict", "the scan Job completed without a readable verdict", permanent=False)


def test_a_permanent_failure_carries_the_scanners_error() -> None:
    message = {"error": "HTTP 404 from files.comm100.test", "retryable": False, "reason": "NotFound"}
    outcome = read_outcome(job("Failed", "PodFailurePolicy"), [pod(3, message)])
    assert outcome == ScanFailed("PermanentError", "HTTP 404 from files.comm100.test", permanent=True)


def test_a_permanent_failure_without_a_message_still_says_so() -> None:
    outcome = read_outcome(job("Failed", "PodFailurePolicy"), [pod(3)])
    assert isinstance(outcome, ScanFailed) and outcome.permanent
    assert outcome.message == "the scanner reported a permanent error"


def test_the_scanner_saying_not_retryable_is_permanent_whatever_the_job_reason() -> None:
    message = {"error": "refused URL", "retryable": False}
    outcome = read_outcome(job("Failed", "BackoffLimitExceeded"), [pod(3, message)])
    assert isinstance(outcome, ScanFailed) and outcome.permanent and outcome.message == "refused URL"


def test_a_deadline_is_not_permanent() -> None:
    outcome = read_outcome(job("Failed", "DeadlineExceeded"), [pod(None)])
    assert outcome == ScanFailed("DeadlineExceeded", "the scan took longer than its deadline", permanent=False)


def test_exit_2_is_transient() -> None:
    message = {"error": "clamd unreachable", "retryable": True, "reason": "EngineUnavailable"}
    outcome = read_outcome(job("Failed", "BackoffLimitExceeded"), [pod(2, message)])
    assert outcome == ScanFailed("TransientError", "clamd unreachable", permanent=False)


def test_a_transient_failure_without_a_message_names_the_job_reason() -> None:
    outcome = read_outcome(job("Failed", "BackoffLimitExceeded"), [pod(137)])
    assert outcome == ScanFailed("TransientError", "the scan Job failed (BackoffLimitExceeded)", permanent=False)
    unknown = read_outcome(job("Failed"), [])
    assert unknown == ScanFailed("TransientError", "the scan Job failed (unknown reason)", permanent=False)


def test_the_latest_terminated_pod_wins_when_complete() -> None:
    # An evicted first pod (ignored by podFailurePolicy) and its replacement: the replacement speaks.
    pods = [
        pod(0, INFECTED, finished_at="2025-03-01T12:00:30Z"),
        pod(0, CLEAN, finished_at="2025-03-01T12:00:05Z"),
        pod(None),
    ]
    outcome = read_outcome(job("Complete"), pods)
    assert isinstance(outcome, ScanVerdict) and outcome.verdict == "infected"


def test_the_latest_terminated_pod_wins_when_failed() -> None:
    pods = [
        pod(3, {"error": "late: permanent", "retryable": False}, finished_at="2025-03-01T12:05:00Z"),
        pod(2, {"error": "early: transient", "retryable": True}, finished_at="2025-03-01T12:00:00Z"),
    ]
    outcome = read_outcome(job("Failed", "BackoffLimitExceeded"), pods)
    assert outcome == ScanFailed("PermanentError", "late: permanent", permanent=True)
    reversed_times = [
        pod(3, {"error": "early: permanent", "retryable": False}, finished_at="2025-03-01T12:00:00Z"),
        pod(2, {"error": "late: transient", "retryable": True}, finished_at="2025-03-01T12:05:00Z"),
    ]
    outcome = read_outcome(job("Failed", "BackoffLimitExceeded"), reversed_times)
    assert outcome == ScanFailed("TransientError", "late: transient", permanent=False)


def test_a_complete_job_reads_an_earlier_verdict_when_the_last_pod_has_none() -> None:
    pods = [pod(0, CLEAN, finished_at="2025-03-01T12:00:05Z"), pod(137, finished_at="2025-03-01T12:00:30Z")]
    outcome = read_outcome(job("Complete"), pods)
    assert isinstance(outcome, ScanVerdict) and outcome.verdict == "clean"


# ---- report_action ---------------------------------------------------------------------------

def policy(**fields: Any) -> PolicySettings:
    return PolicySettings(**fields)


ALL_POLICIES = [
    policy(on_infected=infected, on_error=error, on_skipped=skipped)
    for infected in ("unavailable", "delete")
    for error in ("unavailable", "available")
    for skipped in ("unavailable", "available")
]


@pytest.mark.parametrize("settings", ALL_POLICIES, ids=lambda p: f"{p.on_infected}-{p.on_error}-{p.on_skipped}")
@pytest.mark.parametrize("verdict", ["clean", "infected", "error", "skipped"])
def test_report_action_for_every_verdict_and_setting(verdict: Verdict, settings: PolicySettings) -> None:
    expected = {
        "clean": "available",
        "infected": settings.on_infected,
        "error": settings.on_error,
        "skipped": settings.on_skipped,
    }[verdict]
    assert report_action(verdict, settings) == expected


def test_defaults_fail_closed() -> None:
    defaults = PolicySettings()
    assert [report_action(v, defaults) for v in ("clean", "infected", "error", "skipped")] == [
        "available", "unavailable", "unavailable", "unavailable",
    ]


@pytest.mark.parametrize("settings", ALL_POLICIES, ids=lambda p: f"{p.on_infected}-{p.on_error}-{p.on_skipped}")
def test_infected_is_never_available(settings: PolicySettings) -> None:
    assert report_action("infected", settings) != "available"


# ---- retry_delay -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failed", "seconds"),
    [(0, 5), (1, 5), (2, 10), (3, 20), (4, 40), (6, 160), (7, 300), (8, 300), (50, 300), (1000, 300)],
)
def test_retry_delay_doubles_and_caps(failed: int, seconds: float) -> None:
    assert retry_delay(failed) == dt.timedelta(seconds=seconds)


def test_retry_delay_never_shrinks() -> None:
    delays = [retry_delay(n) for n in range(1, 40)]
    assert delays == sorted(delays)
    assert max(delays) == RETRY_MAX
