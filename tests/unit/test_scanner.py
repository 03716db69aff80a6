"""``filescan scan`` against a real clamd and real clamscan, fetching from a local HTTP server.

Every verdict here comes from ClamAV with the repo's signature database; nothing is mocked.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from controller import scanner
from devstack.clamd import ClamdProcess
from tests.fixtures.clamd import TEST_MARKER, FileServer, Route, archive_bomb, eicar

EICAR_SIGNATURE = "Eicar-Test-Signature.UNOFFICIAL"
MARKER_SIGNATURE = "Filescan.Test.Marker.UNOFFICIAL"
MiB = 1024 * 1024


def zipped(name: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, data)
    return buffer.getvalue()


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- verdicts ----------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["clamd", "clamscan"])
def test_clean_file(engine: str, file_server: FileServer, run_scan: Any) -> None:
    body = b"just a harmless attachment\n" * 1000
    url = file_server.add("/files/report.txt", Route(body=body))

    outcome = run_scan(url, "--engine", engine, "--expected-size", str(len(body)))

    assert outcome.code == 0
    assert outcome.result["verdict"] == "clean"
    assert outcome.result["signature"] is None
    assert outcome.result["sha256"] == hashlib.sha256(body).hexdigest()
    assert outcome.result["bytes"] == len(body)
    assert outcome.result["engine"].startswith("ClamAV 1.")
    assert isinstance(outcome.result["elapsedMs"], int)


@pytest.mark.parametrize("engine", ["clamd", "clamscan"])
@pytest.mark.parametrize(
    ("name", "body", "signature"),
    [
        ("eicar.com", eicar(), EICAR_SIGNATURE),
        ("eicar.zip", zipped("inner/eicar.com", eicar()), EICAR_SIGNATURE),
        ("notes.txt", b"some text before " + TEST_MARKER + b" and after", MARKER_SIGNATURE),
    ],
)
def test_infected_file_reports_the_signature(
    engine: str, name: str, body: bytes, signature: str, file_server: FileServer, run_scan: Any
) -> None:
    url = file_server.add(f"/files/{name}", Route(body=body))

    outcome = run_scan(url, "--engine", engine)

    assert outcome.code == 0
    assert outcome.result["verdict"] == "infected"
    assert outcome.result["signature"] == signature
    assert outcome.result["sha256"] == hashlib.sha256(body).hexdigest()
    assert outcome.result["bytes"] == len(body)


def test_clamd_over_a_unix_socket(clamd: ClamdProcess, file_server: FileServer, run_scan: Any) -> None:
    url = file_server.add("/eicar", Route(body=eicar()))

    outcome = run_scan(url, "--clamd-address", clamd.unix_address)

    assert (outcome.code, outcome.result["signature"]) == (0, EICAR_SIGNATURE)


def test_infected_file_sent_without_content_length(file_server: FileServer, run_scan: Any) -> None:
    body = os.urandom(3 * MiB) + eicar() + os.urandom(1000)
    url = file_server.add("/big-eicar.bin", Route(body=body, chunked=True))

    outcome = run_scan(url)

    assert outcome.result["signature"] == EICAR_SIGNATURE
    assert outcome.result["bytes"] == len(body)
    assert outcome.result["sha256"] == hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize("engine", ["clamd", "clamscan"])
def test_empty_file_is_clean(engine: str, file_server: FileServer, run_scan: Any) -> None:
    url = file_server.add("/empty", Route(body=b""))

    outcome = run_scan(url, "--engine", engine, "--expected-size", "0")

    assert outcome.code == 0
    assert outcome.result["verdict"] == "clean"
    assert outcome.result["bytes"] == 0
    assert outcome.result["sha256"] == hashlib.sha256(b"").hexdigest()


def test_unicode_and_spaces_in_the_file_name(file_server: FileServer, run_scan: Any) -> None:
    path = "/files/Résumé final 履歴書 (1).zip"
    url = file_server.add(path, Route(body=zipped("x.com", eicar())))
    assert "%20" in url and "%C3%A9" in url

    outcome = run_scan(url)

    assert (outcome.code, outcome.result["signature"]) == (0, EICAR_SIGNATURE)
    assert [seen.path for seen in file_server.requests] == [path]


def test_unencoded_unicode_url_is_fetched(file_server: FileServer, run_scan: Any) -> None:
    path = "/files/naïve-файл.txt"
    file_server.add(path, Route(body=b"clean"))

    outcome = run_scan(f"http://127.0.0.1:{file_server.port}{path}")

    assert (outcome.code, outcome.result["verdict"]) == (0, "clean")
    assert [seen.path for seen in file_server.requests] == [path]


def test_compressed_response_is_scanned_decoded(file_server: FileServer, run_scan: Any) -> None:
    body = b"header " + eicar()
    url = file_server.add("/gz", Route(body=gzip.compress(body), headers={"Content-Encoding": "gzip"}))

    outcome = run_scan(url, "--expected-size", str(len(body)))

    assert (outcome.code, outcome.result["signature"]) == (0, EICAR_SIGNATURE)
    assert outcome.result["sha256"] == hashlib.sha256(body).hexdigest()
    assert file_server.requests[0].headers["Accept-Encoding"] == "identity"


def test_compression_bomb_stops_at_the_limit(file_server: FileServer, run_scan: Any) -> None:
    bomb = gzip.compress(bytes(64 * MiB))  # ~64 KiB on the wire
    url = file_server.add("/gz-bomb", Route(body=bomb, headers={"Content-Encoding": "gzip"}))

    outcome = run_scan(url, "--max-bytes", str(MiB))

    assert (outcome.code, outcome.result["reason"]) == (3, "too-large")


# --- transient failures (exit 2) ---------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 503, 429])
def test_server_error_is_transient(status: int, file_server: FileServer, run_scan: Any) -> None:
    url = file_server.add("/flaky", Route(status=status, body=b"try later"))

    outcome = run_scan(url)

    assert outcome.code == 2
    assert outcome.result["retryable"] is True
    assert outcome.result["reason"] == "http-status"
    assert str(status) in outcome.result["error"]


def test_stalled_download_times_out(monkeypatch: pytest.MonkeyPatch, file_server: FileServer, run_scan: Any) -> None:
    monkeypatch.setenv("FILESCAN_FETCH_TIMEOUT_SECONDS", "1")
    url = file_server.add("/stalls", Route(body=b"x" * 100_000, stall_after=10_000))

    outcome = run_scan(url)

    assert outcome.code == 2
    assert outcome.result["reason"] == "timeout"
    assert outcome.result["retryable"] is True


def test_connection_refused_is_transient(run_scan: Any) -> None:
    outcome = run_scan(f"http://127.0.0.1:{closed_port()}/file")

    assert (outcome.code, outcome.result["reason"]) == (2, "network")


def test_clamd_not_running_is_transient_and_skips_the_download(
    monkeypatch: pytest.MonkeyPatch, file_server: FileServer, run_scan: Any
) -> None:
    monkeypatch.setenv("FILESCAN_CLAMD_ADDRESS", f"tcp://127.0.0.1:{closed_port()}")
    url = file_server.add("/file", Route(body=b"data"))

    outcome = run_scan(url)

    assert outcome.code == 2
    assert outcome.result["reason"] == "engine-unavailable"
    assert file_server.requests == []


def test_cli_flag_wins_over_env(
    monkeypatch: pytest.MonkeyPatch, clamd: ClamdProcess, file_server: FileServer, run_scan: Any
) -> None:
    monkeypatch.setenv("FILESCAN_CLAMD_ADDRESS", f"tcp://127.0.0.1:{closed_port()}")
    url = file_server.add("/file", Route(body=b"data"))

    outcome = run_scan(url, "--clamd-address", clamd.address)

    assert (outcome.code, outcome.result["verdict"]) == (0, "clean")


# --- permanent failures (exit 3) ---------------------------------------------------------------


@pytest.mark.parametrize("status", [404, 410])
def test_missing_file_is_permanent(status: int, file_server: FileServer, run_scan: Any) -> None:
    url = file_server.add("/gone", Route(status=status))

    outcome = run_scan(url)

    assert outcome.code == 3
    assert outcome.result["retryable"] is False
    assert outcome.result["reason"] == "not-found"


def test_forbidden_is_permanent(file_server: FileServer, run_scan: Any) -> None:
    url = file_server.add("/expired-signature", Route(status=403))

    assert run_scan(url).code == 3


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/file",  # host not on the list
        "ftp://127.0.0.1/file",  # scheme
        "http://user:pw@127.0.0.1/file",  # credentials
    ],
)
def test_url_refused_by_policy(url: str, file_server: FileServer, run_scan: Any) -> None:
    outcome = run_scan(url)

    assert (outcome.code, outcome.result["reason"]) == (3, "url-refused")


def test_refused_url_is_permanent_even_when_clamd_is_down(monkeypatch: pytest.MonkeyPatch, run_scan: Any) -> None:
    monkeypatch.setenv("FILESCAN_CLAMD_ADDRESS", f"tcp://127.0.0.1:{closed_port()}")

    outcome = run_scan("https://files.example.com/file")

    assert (outcome.code, outcome.result["reason"]) == (3, "url-refused")


def test_http_refused_unless_allowed(monkeypatch: pytest.MonkeyPatch, file_server: FileServer, run_scan: Any) -> None:
    monkeypatch.setenv("FILESCAN_ALLOW_HTTP", "false")
    url = file_server.add("/file", Route(body=b"data"))

    outcome = run_scan(url)

    assert (outcome.code, outcome.result["reason"]) == (3, "url-refused")
    assert file_server.requests == []


def test_redirect_to_a_host_not_allowed_is_refused(file_server: FileServer, run_scan: Any) -> None:
    # "localhost" reaches the same server but is not on the allowlist (only 127.0.0.1 is).
    elsewhere = file_server.add("/target", Route(body=eicar()))
    url = file_server.add("/hop", Route(redirect_to=elsewhere.replace("127.0.0.1", "localhost")))

    outcome = run_scan(url)

    assert (outcome.code, outcome.result["reason"]) == (3, "url-refused")
    assert [seen.path for seen in file_server.requests] == ["/hop"]


def test_redirect_within_allowed_hosts_is_followed_without_cookies(file_server: FileServer, run_scan: Any) -> None:
    file_server.add("/final", Route(body=eicar()))
    url = file_server.add("/hop", Route(redirect_to="/final", headers={"Set-Cookie": "session=secret"}))

    outcome = run_scan(url)

    assert (outcome.code, outcome.result["signature"]) == (0, EICAR_SIGNATURE)
    final = file_server.requests[-1]
    assert final.path == "/final"
    assert "Cookie" not in final.headers
    assert "Authorization" not in final.headers


def test_redirect_loop_is_permanent(file_server: FileServer, run_scan: Any) -> None:
    url = file_server.add("/loop", Route(redirect_to="/loop"))

    outcome = run_scan(url)

    assert (outcome.code, outcome.result["reason"]) == (3, "too-many-redirects")
    assert len(file_server.requests) == scanner.MAX_REDIRECTS + 1


def test_body_past_the_limit_without_content_length(file_server: FileServer, run_scan: Any) -> None:
    url = file_server.add("/endless", Route(body=b"a" * (2 * MiB), chunked=True))

    outcome = run_scan(url, "--max-bytes", str(MiB))

    assert (outcome.code, outcome.result["reason"]) == (3, "too-large")


def test_body_past_the_env_limit(monkeypatch: pytest.MonkeyPatch, file_server: FileServer, run_scan: Any) -> None:
    monkeypatch.setenv("FILESCAN_MAX_FILE_SIZE", "1000")
    url = file_server.add("/big", Route(body=b"a" * 1001, chunked=True))

    outcome = run_scan(url)

    assert (outcome.code, outcome.result["reason"]) == (3, "too-large")


def test_content_length_over_the_limit(file_server: FileServer, run_scan: Any) -> None:
    url = file_server.add("/declared-big", Route(body=b"a" * (2 * MiB)))

    outcome = run_scan(url, "--max-bytes", str(MiB))

    assert (outcome.code, outcome.result["reason"]) == (3, "too-large")
    assert "Content-Length" in outcome.result["error"]


def test_file_exactly_at_the_limit_is_scanned(file_server: FileServer, run_scan: Any) -> None:
    url = file_server.add("/exact", Route(body=b"a" * 4096, chunked=True))

    outcome = run_scan(url, "--max-bytes", "4096")

    assert (outcome.code, outcome.result["bytes"]) == (0, 4096)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "streamed"])
def test_expected_size_mismatch(chunked: bool, file_server: FileServer, run_scan: Any) -> None:
    url = file_server.add("/file", Route(body=b"12345", chunked=chunked))

    outcome = run_scan(url, "--expected-size", "6")

    assert (outcome.code, outcome.result["reason"]) == (3, "size-mismatch")


def test_expected_size_over_the_limit_needs_no_download(file_server: FileServer, run_scan: Any) -> None:
    url = file_server.add("/file", Route(body=b"12345"))

    outcome = run_scan(url, "--expected-size", "5", "--max-bytes", "4")

    assert (outcome.code, outcome.result["reason"]) == (3, "too-large")
    assert file_server.requests == []


# --- clamd's own limits: never a silent clean -------------------------------------------------


def test_stream_over_clamd_stream_max_length_is_permanent(
    limited_clamd: ClamdProcess, file_server: FileServer, run_scan: Any
) -> None:
    url = file_server.add("/huge", Route(body=os.urandom(6 * MiB)))

    outcome = run_scan(url, "--clamd-address", limited_clamd.address)

    assert outcome.code == 3
    assert outcome.result["reason"] == "engine-size-limit"
    assert "StreamMaxLength" in outcome.result["error"]


def test_file_over_clamd_max_file_size_is_infected(
    limited_clamd: ClamdProcess, file_server: FileServer, run_scan: Any
) -> None:
    url = file_server.add("/big", Route(body=os.urandom(3 * MiB)))

    outcome = run_scan(url, "--clamd-address", limited_clamd.address)

    assert outcome.code == 0
    assert outcome.result["verdict"] == "infected"
    assert outcome.result["signature"] == "Heuristics.Limits.Exceeded.MaxFileSize"


def test_archive_bomb_is_infected(limited_clamd: ClamdProcess, file_server: FileServer, run_scan: Any) -> None:
    bomb = archive_bomb()
    assert len(bomb) < 64 * 1024
    url = file_server.add("/bomb.zip", Route(body=bomb))

    outcome = run_scan(url, "--clamd-address", limited_clamd.address)

    assert outcome.code == 0
    assert outcome.result["verdict"] == "infected"
    assert outcome.result["signature"] == "Heuristics.Limits.Exceeded.MaxScanSize"


# --- the result itself -------------------------------------------------------------------------


def test_termination_log_stays_under_4096_bytes_for_a_huge_error(file_server: FileServer, run_scan: Any) -> None:
    path = "/" + "ü" * 6000  # 12,000 bytes of path, echoed in the 404 message
    url = file_server.add(path, Route(status=404))

    outcome = run_scan(url)

    assert outcome.code == 3
    assert len(json.dumps(outcome.result, ensure_ascii=False).encode()) <= scanner.RESULT_LIMIT
    assert outcome.result["error"].endswith("…")


def test_encode_result_cuts_every_long_field() -> None:
    result = {"verdict": "infected", "signature": "S" * 5000, "engine": "E" * 5000, "bytes": 1}

    data = scanner.encode_result(result)

    assert len(data) <= scanner.RESULT_LIMIT
    decoded = json.loads(data)
    assert decoded["verdict"] == "infected" and decoded["bytes"] == 1
    assert decoded["signature"].startswith("SSS") and decoded["engine"].startswith("EEE")


def test_query_string_never_reaches_the_result(file_server: FileServer, run_scan: Any) -> None:
    url = file_server.add("/private", Route(status=500)) + "?signature=TOPSECRET"

    outcome = run_scan(url)

    assert outcome.code == 2
    assert "TOPSECRET" not in outcome.stdout


def test_as_a_subprocess(clamd: ClamdProcess, file_server: FileServer, tmp_path: Path) -> None:
    """The installed ``filescan`` entry point, configured by env only as the operator does."""
    url = file_server.add("/eicar.txt", Route(body=eicar())) + "?signature=TOPSECRET"
    log = tmp_path / "termination-log"
    env = {key: value for key, value in os.environ.items() if not key.startswith("FILESCAN_")}
    env |= {
        "FILESCAN_ALLOWED_FILE_HOSTS": "127.0.0.1",
        "FILESCAN_ALLOW_HTTP": "true",
        "FILESCAN_CLAMD_ADDRESS": clamd.address,
        "FILESCAN_SCAN_ENGINE": "clamd",
        "FILESCAN_SCAN_URL": url,  # as the scan Job passes it: not in argv, where it would show
    }
    filescan = Path(sys.executable).parent / "filescan"

    completed = subprocess.run(
        [str(filescan), "scan", "--termination-log", str(log)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert completed.returncode == 0, completed.stderr
    result = json.loads(log.read_text())
    assert json.loads(completed.stdout) == result
    assert result["signature"] == EICAR_SIGNATURE
    assert completed.stderr.strip(), "the scanner logs what it does"
    for line in completed.stderr.splitlines():  # logs are JSON lines on stderr
        assert json.loads(line)["logger"].startswith("filescan")
    assert "TOPSECRET" not in completed.stderr + completed.stdout
