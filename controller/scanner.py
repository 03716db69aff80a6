"""``filescan scan``: the scan Job's program. Streams one file into ClamAV and writes the verdict.

Design decisions:

* The download is an httpx stream fed to the engine as it arrives. For ``clamd`` the bytes go
  straight into an INSTREAM session (never to disk, never whole in memory; memory stays flat
  whatever the file size). ``clamscan`` needs a path, so it gets a scratch file in ``TMPDIR``
  (the Job mounts a size-limited emptyDir there), deleted afterwards. The sha256 and byte count
  are taken on the way, and the byte limit is enforced on the stream itself, not only on
  Content-Length.
* Redirects are followed here, not by httpx, so every hop passes the same allowlist and scheme
  rule as the original URL (:func:`controller.urls.check_file_url`), at most
  :data:`MAX_REDIRECTS` of them. Each hop is a fresh request: no cookie set by a hop and no
  credential is ever sent on. ``Accept-Encoding: identity`` asks for the file's own bytes; if a
  server compresses anyway, the limit and the digest apply to the decoded bytes (a gzip bomb
  stops at the limit).
* Outcomes are exit codes the Job's ``podFailurePolicy`` can act on: 0 a verdict (clean or
  infected), 2 a transient failure worth a retry (connection refused or reset, 5xx, 408/429,
  timeouts, clamd or clamscan unavailable, anything unexpected), 3 a permanent one (404/410 and
  other 4xx, a URL or redirect refused by policy, a file over the limit, a size different from
  ``--expected-size``, clamd refusing the stream as over its ``StreamMaxLength``). Either way one
  JSON object goes to the termination log and stdout; on failure it is
  ``{"error", "retryable", "reason", "elapsedMs"}`` where ``reason`` is a stable code.
* ClamAV's limits never yield a silent clean. With ``AlertExceedsMax yes`` (the devstack's and
  the recommended clamd setting; always passed to clamscan) a file or archive over clamd's
  ``MaxFileSize``/``MaxScanSize``/``MaxRecursion`` comes back as
  ``Heuristics.Limits.Exceeded.<Limit>``: that is the engine's verdict and is reported as
  ``infected`` with that signature, so policy fails closed and the name says why. A stream over
  ``StreamMaxLength`` gets no verdict at all (clamd answers ``INSTREAM size limit exceeded``): exit
  3, reason ``engine-size-limit``, because the same bytes would meet the same limit on a retry.
  Deploy clamd with ``StreamMaxLength`` at least ``FILESCAN_MAX_FILE_SIZE`` so this stays rare.
* An infected verdict wins over a size mismatch with ``--expected-size``: the bytes scanned are
  the bytes users would download, and an infection in them is worth reporting.
* The termination message is bounded (4096 bytes in Kubernetes): long strings are cut until the
  JSON fits in :data:`RESULT_LIMIT` bytes. URLs are logged and reported without their query
  string (signed URLs carry secrets there).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urljoin

import httpx

from controller.clamav import ClamdAddress, ClamdClient, ClamdStreamTooLong, ClamdUnavailable
from controller.logs import configure_logging
from controller.scanconfig import FetchRules, ScanEngine, read_scanner_env
from controller.urls import URLRefused, check_file_url, redact_url

CHUNK_SIZE = 256 * 1024
"""Bytes per chunk when a compressed body is decoded (unencoded bodies pass through as read, 64 KiB
at a time); each chunk is one INSTREAM frame. Memory holds a few chunks at most."""

MAX_REDIRECTS = 5
RESULT_LIMIT = 4000
"""Largest termination message we write, in bytes (Kubernetes keeps at most 4096)."""

CLAMSCAN = "clamscan"
CLAMSCAN_TIMEOUT = 900.0
"""Seconds one clamscan run may take (it loads the whole database first); the Job deadline is
normally shorter and wins."""

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_TRANSIENT_4XX = frozenset({408, 425, 429})
_CLAMSCAN_DEFAULT_MAX_FILESIZE = 100 * 1024 * 1024
_CLAMSCAN_DEFAULT_MAX_SCANSIZE = 400 * 1024 * 1024
_CLAMSCAN_LIMIT_CEILING = 4000 * 1024 * 1024  # clamscan's limits are 32-bit

log = logging.getLogger("filescan.scanner")



SCAN_URL_ENV = "FILESCAN_SCAN_URL"
"""Where the scan Job puts the file's URL (``--url`` wins when given)."""

class ScanFailed(Exception):
    """No verdict: ``retryable`` chooses exit 2 over 3; ``reason`` is a stable code for the operator."""

    def __init__(self, reason: str, message: str, *, retryable: bool):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retryable = retryable

    @property
    def exit_code(self) -> int:
        return 2 if self.retryable else 3


def _transient(reason: str, message: str) -> ScanFailed:
    return ScanFailed(reason, message, retryable=True)


def _permanent(reason: str, message: str) -> ScanFailed:
    return ScanFailed(reason, message, retryable=False)


@dataclass(frozen=True)
class ScanRequest:
    """Everything one scan needs, resolved from flags, then env, then defaults."""

    url: str
    expected_size: int | None
    max_bytes: int
    engine: ScanEngine
    clamd_address: str
    clamscan_database: Path | None
    fetch_timeout: float
    policy: FetchRules

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ScanRequest:
        try:
            policy, scanner = read_scanner_env()
        except ValueError as error:
            raise _permanent("bad-configuration", f"invalid FILESCAN_* settings: {error}") from None
        max_bytes: int = policy.max_file_size if args.max_bytes is None else args.max_bytes
        if max_bytes < 0 or (args.expected_size is not None and args.expected_size < 0):
            raise _permanent("bad-configuration", "--max-bytes and --expected-size must not be negative")
        # The scan Job passes the URL in the environment, not in argv: a signed URL carries its
        # secret in the query string, and argv shows in process lists and runtime logs.
        url = args.url or os.environ.get(SCAN_URL_ENV, "")
        if not url:
            raise _permanent("bad-configuration", f"no file to scan: give --url or set {SCAN_URL_ENV}")
        return cls(
            url=url,
            expected_size=args.expected_size,
            max_bytes=max_bytes,
            engine=args.engine or scanner.scan_engine,
            clamd_address=args.clamd_address or scanner.clamd_address,
            clamscan_database=scanner.clamscan_database,
            fetch_timeout=scanner.fetch_timeout_seconds,
            policy=policy,
        )


@dataclass(frozen=True)
class Verdict:
    verdict: str
    signature: str | None
    sha256: str
    bytes: int
    engine: str
    elapsed_ms: int

    def as_result(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "signature": self.signature,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "engine": self.engine,
            "elapsedMs": self.elapsed_ms,
        }


# --- engines -----------------------------------------------------------------------------------


class Engine(Protocol):
    def version(self) -> str:
        """``ClamAV <engine>[/<db version>]``; raises :class:`ScanFailed` when the engine is unusable."""

    def scan(self, chunks: Iterable[bytes]) -> str | None:
        """Consume ``chunks`` and return the signature found, or None when clean."""


def _short_version(text: str) -> str:
    """``ClamAV 1.4.6/27000/Tue Jan 1 ...`` → ``ClamAV 1.4.6/27000`` (the date adds nothing)."""
    return "/".join(text.strip().split("/")[:2])


class ClamdEngine:
    """INSTREAM to a running clamd: the database stays loaded, a scan costs milliseconds."""

    def __init__(self, address: str):
        try:
            self.client = ClamdClient(ClamdAddress.parse(address))
        except ValueError as error:
            raise _permanent("bad-configuration", str(error)) from None

    def version(self) -> str:
        try:
            return _short_version(self.client.version())
        except ClamdUnavailable as error:
            raise _transient("engine-unavailable", str(error)) from error

    def scan(self, chunks: Iterable[bytes]) -> str | None:
        try:
            with self.client.instream() as session:
                for chunk in chunks:
                    session.send(chunk)
                return session.finish().signature
        except ClamdStreamTooLong as error:
            raise _permanent(
                "engine-size-limit",
                f"clamd refused the file as longer than its StreamMaxLength ({error})",
            ) from error
        except ClamdUnavailable as error:
            raise _transient("engine-unavailable", str(error)) from error


class ClamscanEngine:
    """Runs ``clamscan`` on a scratch copy: no daemon needed, but it loads the database every time."""

    def __init__(self, database: Path | None, max_bytes: int):
        self.database = database
        self.max_bytes = max_bytes

    def _base_command(self) -> list[str]:
        command = [CLAMSCAN]
        if self.database is not None:
            command.append(f"--database={self.database}")
        return command

    def version(self) -> str:
        try:
            completed = subprocess.run(
                [*self._base_command(), "--version"], capture_output=True, text=True, timeout=60, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            raise _transient("engine-unavailable", f"cannot run clamscan: {error}") from error
        if completed.returncode != 0 or not completed.stdout.startswith("ClamAV"):
            raise _transient("engine-unavailable", f"clamscan --version failed: {completed.stderr[-500:]}")
        return _short_version(completed.stdout)

    def scan(self, chunks: Iterable[bytes]) -> str | None:
        # Our own limit bounds the top-level file; raise clamscan's so a file we accepted is not
        # flagged for its size alone, while archives that expand past them still are.
        max_filesize = min(max(self.max_bytes, _CLAMSCAN_DEFAULT_MAX_FILESIZE), _CLAMSCAN_LIMIT_CEILING)
        max_scansize = min(max(self.max_bytes, _CLAMSCAN_DEFAULT_MAX_SCANSIZE), _CLAMSCAN_LIMIT_CEILING)
        with tempfile.TemporaryDirectory(prefix="filescan-") as scratch:
            path = Path(scratch) / "file"
            try:
                with path.open("wb") as out:
                    for chunk in chunks:
                        out.write(chunk)
            except OSError as error:
                raise _transient("scratch-unwritable", f"cannot write the scratch file: {error}") from error
            command = [
                *self._base_command(),
                "--no-summary",
                "--alert-exceeds-max=yes",
                f"--max-filesize={max_filesize}",
                f"--max-scansize={max_scansize}",
                "--",
                str(path),
            ]
            try:
                completed = subprocess.run(
                    command, capture_output=True, text=True, timeout=CLAMSCAN_TIMEOUT, check=False
                )
            except (OSError, subprocess.TimeoutExpired) as error:
                raise _transient("engine-unavailable", f"clamscan failed: {error}") from error
        return _parse_clamscan(str(path), completed)


def _parse_clamscan(path: str, completed: subprocess.CompletedProcess[str]) -> str | None:
    """clamscan exits 0 (clean), 1 (found) or 2 (error) and prints ``<path>: OK|<Name> FOUND``
    (``<path>: Empty file`` for 0 bytes)."""
    prefix = f"{path}: "
    results = [line.removeprefix(prefix) for line in completed.stdout.splitlines() if line.startswith(prefix)]
    if completed.returncode == 0 and results in (["OK"], ["Empty file"]):
        return None
    if completed.returncode == 1:
        for result in results:
            if result.endswith(" FOUND"):
                return result.removesuffix(" FOUND")
    detail = (completed.stderr.strip() or completed.stdout.strip())[-500:]
    raise _transient("engine-unavailable", f"clamscan exited {completed.returncode}: {detail}")


def build_engine(request: ScanRequest) -> Engine:
    if request.engine == "clamscan":
        return ClamscanEngine(request.clamscan_database, request.max_bytes)
    return ClamdEngine(request.clamd_address)


# --- download ----------------------------------------------------------------------------------


class MeteredBody:
    """Passes chunks through while counting and hashing them; refuses to pass the byte limit."""

    def __init__(self, chunks: Iterator[bytes], max_bytes: int):
        self._chunks = chunks
        self.max_bytes = max_bytes
        self.bytes = 0
        self._sha256 = hashlib.sha256()

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            self.bytes += len(chunk)
            if self.bytes > self.max_bytes:
                raise _permanent("too-large", f"the file is larger than the limit of {self.max_bytes} bytes")
            self._sha256.update(chunk)
            yield chunk


def _check_status(response: httpx.Response, url: str) -> None:
    status = response.status_code
    if status == 200:
        return
    what = f"GET {redact_url(url)} answered {status}"
    if status in (404, 410):
        raise _permanent("not-found", what)
    if status >= 500 or status in _TRANSIENT_4XX:
        raise _transient("http-status", what)
    raise _permanent("http-status", what)


@contextlib.contextmanager
def open_download(client: httpx.Client, url: str, policy: FetchRules) -> Iterator[httpx.Response]:
    """The 200 response for ``url``, following at most :data:`MAX_REDIRECTS` allowed redirects."""
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        try:
            check_file_url(current, policy)
        except URLRefused as error:
            hop = "" if current == url else " (redirect)"
            raise _permanent("url-refused", f"{error}{hop}") from None
        request = httpx.Request(
            "GET",
            current,
            headers={"Accept-Encoding": "identity", "User-Agent": "filescan-operator scanner"},
        )
        try:
            response = client.send(request, stream=True)
        except httpx.RemoteProtocolError as error:
            # httpx parses a redirect's Location even when not following it, and reports one it
            # cannot parse (``0177.0.0.1``, a tab) as a protocol error: that is a refused redirect,
            # and the same answer would meet a retry.
            if isinstance(error.__context__, httpx.InvalidURL):
                raise _permanent("url-refused", f"redirect from {redact_url(current)} to an invalid URL") from None
            raise
        try:
            if response.status_code in _REDIRECT_STATUSES:
                location = response.headers.get("location")
                if not location:
                    raise _permanent("http-status", f"redirect without Location from {redact_url(current)}")
                current = urljoin(current, location)
                continue
            _check_status(response, current)
            yield response
            return
        finally:
            response.close()
    raise _permanent("too-many-redirects", f"more than {MAX_REDIRECTS} redirects from {redact_url(url)}")


def _body_chunks(response: httpx.Response) -> Iterator[bytes]:
    """The file's bytes: raw when the server sent them unencoded (no decoder, no re-chunking copy),
    decoded otherwise."""
    if response.headers.get("content-encoding", "identity").lower() == "identity":
        return response.iter_raw()
    return response.iter_bytes(CHUNK_SIZE)


def _check_declared_length(response: httpx.Response, request: ScanRequest) -> None:
    """Refuse early on Content-Length; the stream is still metered, since the header can lie."""
    if response.headers.get("content-encoding", "identity").lower() != "identity":
        return  # the header counts compressed bytes; the limit applies to decoded ones
    declared = response.headers.get("content-length")
    if declared is None or not declared.isdigit():
        return
    length = int(declared)
    if length > request.max_bytes:
        raise _permanent("too-large", f"Content-Length {length} is over the limit of {request.max_bytes} bytes")
    if request.expected_size is not None and length != request.expected_size:
        raise _permanent(
            "size-mismatch", f"Content-Length {length} differs from the expected size {request.expected_size}"
        )


def scan_file(request: ScanRequest, started: float) -> Verdict:
    """Fetch and scan; raises :class:`ScanFailed` when there is no verdict."""
    if request.expected_size is not None and request.expected_size > request.max_bytes:
        raise _permanent(
            "too-large",
            f"expected size {request.expected_size} is over the limit of {request.max_bytes} bytes",
        )
    try:  # checked again by open_download; first here, so a refused URL is permanent whatever clamd's state
        check_file_url(request.url, request.policy)
    except URLRefused as error:
        raise _permanent("url-refused", str(error)) from None
    engine = build_engine(request)
    engine_version = engine.version()  # an unavailable engine fails before the download starts
    timeout = httpx.Timeout(request.fetch_timeout)
    try:
        with (
            httpx.Client(timeout=timeout, follow_redirects=False) as client,
            open_download(client, request.url, request.policy) as response,
        ):
            _check_declared_length(response, request)
            body = MeteredBody(_body_chunks(response), request.max_bytes)
            signature = engine.scan(body)
    except httpx.TimeoutException as error:
        raise _transient("timeout", f"fetching {redact_url(request.url)} timed out ({error})") from error
    except httpx.DecodingError as error:
        raise _permanent("bad-encoding", f"cannot decode the response body: {error}") from error
    except httpx.TransportError as error:
        raise _transient(
            "network", f"fetching {redact_url(request.url)} failed: {type(error).__name__}: {error}"
        ) from error
    except httpx.InvalidURL as error:
        raise _permanent("url-refused", f"invalid URL: {error}") from error
    if signature is None and request.expected_size is not None and body.bytes != request.expected_size:
        raise _permanent("size-mismatch", f"received {body.bytes} bytes, expected {request.expected_size}")
    return Verdict(
        verdict="infected" if signature else "clean",
        signature=signature,
        sha256=body.sha256,
        bytes=body.bytes,
        engine=engine_version,
        elapsed_ms=_elapsed_ms(started),
    )


# --- output ------------------------------------------------------------------------------------


def encode_result(result: dict[str, Any], limit: int = RESULT_LIMIT) -> bytes:
    """Compact JSON of at most ``limit`` bytes: the longest string is cut until it fits."""
    fields = dict(result)
    while True:
        data = json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode()
        if len(data) <= limit:
            return data
        strings = [key for key, value in fields.items() if isinstance(value, str)]
        if not strings:
            raise ValueError("result does not fit without its strings")
        longest = max(strings, key=lambda key: len(fields[key].encode()))
        value: str = fields[longest]
        if not value:
            raise ValueError("result does not fit")
        fields[longest] = value[: len(value) // 2] + "…"


def write_result(result: dict[str, Any], termination_log: str) -> None:
    data = encode_result(result)
    try:
        Path(termination_log).write_bytes(data)
    except OSError as error:
        log.warning("cannot write the termination log %s: %s", termination_log, error)
    sys.stdout.write(data.decode() + "\n")
    sys.stdout.flush()


def _elapsed_ms(started: float) -> int:
    return round((time.monotonic() - started) * 1000)


def main(args: argparse.Namespace) -> int:
    """Run one scan; returns the exit code (0 verdict, 2 transient error, 3 permanent error)."""
    started = time.monotonic()
    configure_logging(keep_existing=True)
    try:
        request = ScanRequest.from_args(args)
        log.info("scanning %s with %s", redact_url(request.url), request.engine)
        verdict = scan_file(request, started)
    except ScanFailed as failure:
        log.warning("scan failed (%s, exit %d): %s", failure.reason, failure.exit_code, failure.message)
        failed = {
            "error": failure.message,
            "retryable": failure.retryable,
            "reason": failure.reason,
            "elapsedMs": _elapsed_ms(started),
        }
        write_result(failed, args.termination_log)
        return failure.exit_code
    except Exception as error:  # a bug or an unforeseen failure: say so, and let the Job retry
        log.exception("scan failed unexpectedly")
        crashed = {
            "error": f"unexpected {type(error).__name__}: {error}",
            "retryable": True,
            "reason": "internal-error",
            "elapsedMs": _elapsed_ms(started),
        }
        write_result(crashed, args.termination_log)
        return 2
    log.info("verdict %s (%s) for %d bytes", verdict.verdict, verdict.signature or "-", verdict.bytes)
    write_result(verdict.as_result(), args.termination_log)
    return 0
