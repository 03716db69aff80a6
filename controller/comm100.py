"""The only client of Comm100's REST API: attachment status reports (PUT) and deletions (DELETE).

Design decisions:

* One call is one small, typed operation (:meth:`Comm100Client.report`, :meth:`Comm100Client.delete`)
  that runs through :func:`call_with_retries`. The same code path serves both ways the operator may
  want to work: retry inline for a bounded time (a :class:`RetryPolicy`), or make one attempt
  (:data:`NO_RETRY`), catch the :class:`Comm100Error` and requeue after ``error.suggested_delay``.
* Errors are classified once, here. ``retryable`` says whether the same call may later succeed;
  ``transient`` says whether it is worth retrying *inline* (5xx, 429, timeouts, refused connections).
  401/403 and unexpected answers (3xx, other 4xx) are retryable but not transient: they wait for a
  human (a rotated token, a fixed setting), so they are raised at once with a slow ``suggested_delay``
  and the operator keeps retrying and says why in its ``Reported`` condition. 404 is final. Every
  retryable error leaving :func:`call_with_retries` carries a ``suggested_delay`` in seconds.
* Backoff is exponential with full jitter (``uniform(0, min(max_delay, base * 2**n))``), so many
  FileScans failing together do not retry in lockstep. ``Retry-After`` (seconds or HTTP-date) is
  obeyed exactly, never shortened. A delay that would end past the policy's ``max_elapsed`` is not
  slept: the error is raised with that delay as ``suggested_delay`` so the caller can requeue.
* The pacer is a sliding-window log: a call may start only when fewer than N calls are in flight
  or ended less than a period ago. Counting a call until a period after it *ended* (not started)
  keeps the limit on Comm100's side too, where a request that waited for a connection arrives late
  (the fault suite saw 10 arrivals in a 2 s window with 8 allowed when starts were counted). Unlike
  a token bucket of size N (which lets 2N through in one window), this can never exceed N in *any*
  window, yet it still lets a burst of N through at once instead of spacing every call by period/N
  (which would hold 300 reports for 5 minutes).
  Each attempt, retries included, takes a slot; waiters are served in order (an ``asyncio.Lock``).
* The bearer token comes from the token file when one is set, re-read whenever its identity
  (inode, mtime, size) changes and after every 401/403, so a rotated Kubernetes Secret takes effect
  without a restart. If the file briefly disappears during a rotation, the last token read is used.
* Secrets never leave this module: every message and response body is redacted (every token seen,
  and any ``Bearer …`` text) and truncated before it reaches an exception or a log line; a
  logging filter does the same to httpx's and httpcore's own lines while a client is open. Redirects
  are not followed, so the token is never sent to another host.
* The guid is validated before it becomes part of a URL path, so a crafted event cannot steer a call
  to another endpoint. Clock, sleep, randomness and the HTTP transport are injectable for tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Literal, TypeVar

import httpx
from prometheus_client import Counter
from pydantic import SecretStr

from controller.settings import Comm100Settings, StatusStyle

__all__ = [
    "CALLS",
    "NO_RETRY",
    "SOURCES",
    "Comm100AuthError",
    "Comm100Client",
    "Comm100Error",
    "Comm100NotFoundError",
    "Comm100RateLimitedError",
    "Comm100RequestError",
    "Comm100ServerError",
    "Comm100TransportError",
    "Pacer",
    "ReportResult",
    "RetryPolicy",
    "Source",
    "attachment_path",
    "call_with_retries",
    "parse_retry_after",
    "redact",
    "status_body",
]

log = logging.getLogger(__name__)

Source = Literal["ticket", "livechat"]
SOURCES: tuple[Source, ...] = ("ticket", "livechat")
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
T = TypeVar("T")

BODY_LIMIT = 200
"""Characters of a response body kept in errors and logs."""

_GUID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
_BEARER = re.compile(r"(?i)\b(bearer\s+)[^\s\"',;]+")
_REDACTED = "***"
# httpcore logs to these child loggers (a filter on a parent does not see their records).
_HTTP_LOGGERS = ("httpx", *(f"httpcore.{n}" for n in ("connection", "http11", "http2", "proxy", "socks")))

CALLS = Counter(
    "filescan_comm100_calls",
    "Calls to Comm100's API by HTTP method and answer code ('transport' when no answer came).",
    ["method", "code"],
)


# --------------------------------------------------------------------------------------------
# Errors


class Comm100Error(Exception):
    """A call to Comm100 failed. ``str()`` is safe to log and to put in a condition message."""

    retryable: ClassVar[bool] = True
    """The same call may succeed later."""
    transient: ClassVar[bool] = False
    """Worth retrying inline after a short backoff (as opposed to waiting for a human)."""

    def __init__(
        self,
        message: str,
        *,
        method: str,
        path: str,
        status_code: int | None = None,
        body: str = "",
        retry_after: float | None = None,
        suggested_delay: float | None = None,
    ) -> None:
        super().__init__(message)
        self.method = method
        self.path = path
        self.status_code = status_code
        self.body = body
        """The response body, redacted and truncated to :data:`BODY_LIMIT` characters."""
        self.retry_after = retry_after
        """Seconds from the ``Retry-After`` header, when the answer had one."""
        self.suggested_delay = suggested_delay
        """Seconds to wait before calling again; set on every retryable error that leaves
        :func:`call_with_retries`, ``None`` when the call should not be repeated."""
        self.attempts = 1
        """Attempts made by :func:`call_with_retries` before it raised this error."""


class Comm100AuthError(Comm100Error):
    """401/403, or no usable token: retried slowly, until someone fixes the token."""


class Comm100NotFoundError(Comm100Error):
    """404: the attachment (or the endpoint) does not exist. Final."""

    retryable: ClassVar[bool] = False


class Comm100RateLimitedError(Comm100Error):
    """429: Comm100's rate limit; ``retry_after`` says for how long when the answer said."""

    transient: ClassVar[bool] = True


class Comm100ServerError(Comm100Error):
    """5xx: Comm100 is having trouble; ``retry_after`` is set when the answer had the header."""

    transient: ClassVar[bool] = True


class Comm100TransportError(Comm100Error):
    """No answer: timeout, refused or dropped connection. ``status_code`` is ``None``.

    A PUT that timed out may still have been applied; repeating it is harmless. A repeated DELETE
    may then answer 404."""

    transient: ClassVar[bool] = True


class Comm100RequestError(Comm100Error):
    """Any other answer (3xx, 4xx other than 401/403/404/429): most likely a wrong setting
    (base URL, status style), so retried slowly rather than given up."""


# --------------------------------------------------------------------------------------------
# Pure helpers


def status_body(style: StatusStyle, available: bool) -> dict[str, Any]:
    """The PUT body saying whether the attachment may be downloaded, in the configured vocabulary."""
    if style == "available":
        return {"status": "available" if available else "unavailable"}
    if style == "passed":
        return {"status": "passed" if available else "failed"}
    return {"isAvailable": available}


def attachment_path(source: Source, guid: str) -> str:
    """``/api/v2/{source}/attachments/{guid}``, refusing anything that could escape the path."""
    if source not in SOURCES:
        raise ValueError(f"unknown Comm100 source {source!r}; expected one of {SOURCES}")
    if not _GUID.fullmatch(guid):
        raise ValueError("attachment guid must be 1-128 letters, digits, '-' or '_'")
    return f"/api/v2/{source}/attachments/{guid}"


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or HTTP-date); ``None`` if
    absent or unreadable. A date in the past gives 0."""
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if seconds == seconds else None  # NaN is unreadable
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def redact(text: str, secrets: Iterable[str]) -> str:
    """Remove every known secret and any ``Bearer …`` credential from ``text``."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, _REDACTED)
    return _BEARER.sub(lambda m: m.group(1) + _REDACTED, text)


def _truncate(text: str, limit: int = BODY_LIMIT) -> str:
    return text if len(text) <= limit else text[:limit] + f"…[{len(text) - limit} more chars]"


# --------------------------------------------------------------------------------------------
# Retrying


@dataclass(frozen=True)
class RetryPolicy:
    """How one call is retried inline. Seconds throughout."""

    max_attempts: int = 5
    """Attempts in all, the first included; 1 means no inline retry."""
    max_elapsed: float = 60.0
    """No retry sleep may end later than this after the first attempt started."""
    base_delay: float = 1.0
    """Cap of the first backoff; doubled per retry (full jitter picks uniformly below the cap)."""
    max_delay: float = 60.0
    """Largest backoff cap; ``Retry-After`` may ask for more and is obeyed."""
    slow_delay: float = 60.0
    """``suggested_delay`` for errors that wait for a human (401/403, unexpected answers)."""

    def backoff(self, retry: int, rng: random.Random) -> float:
        """Full-jitter delay before retry number ``retry`` (1 for the first retry)."""
        cap = min(self.max_delay, self.base_delay * 2 ** (retry - 1))
        return rng.uniform(0.0, cap)


NO_RETRY = RetryPolicy(max_attempts=1)
"""One attempt: the caller requeues on a retryable error after ``error.suggested_delay``."""


async def call_with_retries(
    operation: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    sleep: Sleep = asyncio.sleep,
    clock: Clock = time.monotonic,
    rng: random.Random | None = None,
) -> T:
    """Run ``operation`` until it succeeds, retrying transient :class:`Comm100Error` within
    ``policy``; raise the last error (with ``attempts`` and ``suggested_delay`` set) otherwise."""
    rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
    started = clock()
    attempt = 0
    while True:
        attempt += 1
        try:
            return await operation()
        except Comm100Error as error:
            error.attempts = attempt
            if not error.retryable:
                error.suggested_delay = None
                raise
            if not error.transient:
                error.suggested_delay = max(policy.slow_delay, error.retry_after or 0.0)
                raise
            delay = error.retry_after if error.retry_after is not None else policy.backoff(attempt, rng)
            error.suggested_delay = delay
            if attempt >= policy.max_attempts or clock() - started + delay > policy.max_elapsed:
                raise
            log.warning("%s; retry %d in %.1fs", error, attempt, delay)
            await sleep(delay)


# --------------------------------------------------------------------------------------------
# Pacing


class Pacer:
    """At most ``calls`` calls in any window of ``period`` seconds, shared by every caller.

    A call holds its slot from the moment it starts until ``period`` after it *ended* (see
    :meth:`slot`). Counting from the start alone is not enough: a request that waited for a
    connection, or was slow on the wire, reaches Comm100 later than it started, and a window on
    Comm100's side could then see more than ``calls`` of them.
    """

    _POLL = 0.05
    """How often a waiter looks again while every slot is held by a call still in flight."""

    def __init__(
        self,
        calls: int,
        period: float,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if calls < 1 or period <= 0:
            raise ValueError("a pacer needs calls >= 1 and period > 0")
        self.calls = calls
        self.period = period
        self._clock = clock
        self._sleep = sleep
        self._held: list[list[float | None]] = []  # [end] per slot; None while the call is in flight
        self._lock = asyncio.Lock()

    async def _take(self) -> tuple[float, list[float | None]]:
        async with self._lock:
            asked = self._clock()
            while True:
                now = self._clock()
                self._held = [h for h in self._held if h[0] is None or now - h[0] < self.period]
                if len(self._held) < self.calls:
                    entry: list[float | None] = [None]
                    self._held.append(entry)
                    return now - asked, entry
                ends = [h[0] for h in self._held if h[0] is not None]
                await self._sleep(min(ends) + self.period - now if ends else self._POLL)

    async def acquire(self) -> float:
        """Take a slot for a call that ends at once; return the seconds waited."""
        waited, entry = await self._take()
        entry[0] = self._clock()
        return waited

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[float]:
        """Hold a slot for the duration of one call (yields the seconds waited for it)."""
        waited, entry = await self._take()
        try:
            yield waited
        finally:
            entry[0] = self._clock()


# --------------------------------------------------------------------------------------------
# The token


class _NoToken(Exception):
    pass


class _BearerToken:
    """The current token: from the file when set (re-read when it changes), else the setting."""

    def __init__(self, token: SecretStr | None, path: Path | None) -> None:
        self._static = token.get_secret_value().strip() if token else None
        self._path = path
        self._stamp: tuple[int, int, int, int] | None = None
        self._current: str | None = None
        self.seen: set[str] = {self._static} if self._static else set()
        """Every token ever used, for redaction."""

    def get(self) -> str:
        if self._path is None:
            if not self._static:
                raise _NoToken("no Comm100 token configured (FILESCAN_COMM100_TOKEN or _TOKEN_FILE)")
            return self._static
        try:
            return self._from_file(self._path)
        except (OSError, _NoToken) as exc:
            if self._current is None:
                raise _NoToken(f"cannot use the Comm100 token file {self._path}: {exc}") from None
            # A Secret being rewritten in place can be briefly missing or empty.
            log.warning("cannot use the Comm100 token file %s (%s); keeping the last token", self._path, exc)
            return self._current

    def _from_file(self, path: Path) -> str:
        st = path.stat()
        stamp = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == self._stamp and self._current is not None:
            return self._current
        token = path.read_text(encoding="utf-8").strip()
        if not token:
            raise _NoToken("the file is empty")
        if self._current is not None and token != self._current:
            log.info("Comm100 token file %s changed; using the new token", path)
        self._stamp, self._current = stamp, token
        self.seen.add(token)
        return token

    def invalidate(self) -> None:
        """Force a re-read on the next call (after a 401/403)."""
        self._stamp = None


# --------------------------------------------------------------------------------------------
# The client


@dataclass(frozen=True)
class ReportResult:
    """A call Comm100 accepted."""

    action: Literal["report", "delete"]
    source: Source
    guid: str
    available: bool | None
    """What was reported; ``None`` for a deletion."""
    body: dict[str, Any] | None
    """The JSON body sent (``None`` for a deletion)."""
    status_code: int
    attempts: int


class _RedactingFilter(logging.Filter):
    """Scrubs this client's tokens from httpx's own log lines (they quote the server's reason
    phrase, which a careless server could fill with the credential it was sent)."""

    def __init__(self, token: _BearerToken) -> None:
        super().__init__()
        self._token = token

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        safe = redact(message, self._token.seen)
        if safe != message:
            record.msg, record.args = safe, None
        return True


class Comm100Client:
    """Reports scan results to Comm100. One per process: its pacer is shared by every call."""

    def __init__(
        self,
        settings: Comm100Settings,
        *,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        pacer: Pacer | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        calls, period = settings.rate_limit
        self.settings = settings
        self.retry = retry or RetryPolicy()
        """Default policy for calls that do not pass their own."""
        self.pacer = pacer or Pacer(calls, period, clock=clock, sleep=sleep)
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._token = _BearerToken(settings.comm100_token, settings.comm100_token_file)
        self._log_filter = _RedactingFilter(self._token)
        for name in _HTTP_LOGGERS:
            logging.getLogger(name).addFilter(self._log_filter)
        self._http = httpx.AsyncClient(
            base_url=settings.comm100_base_url.rstrip("/"),
            timeout=settings.comm100_timeout_seconds,
            transport=transport,
            follow_redirects=False,
            headers={"Accept": "application/json", "User-Agent": "filescan-operator"},
        )

    async def report(
        self, source: Source, guid: str, available: bool, *, retry: RetryPolicy | None = None
    ) -> ReportResult:
        """PUT the attachment's status; raise :class:`Comm100Error` when Comm100 does not accept it."""
        path = attachment_path(source, guid)
        body = status_body(self.settings.comm100_status_style, available)
        response, attempts = await self._call("PUT", path, body, retry)
        return ReportResult("report", source, guid, available, body, response.status_code, attempts)

    async def delete(self, source: Source, guid: str, *, retry: RetryPolicy | None = None) -> ReportResult:
        """DELETE the attachment. A 404 raises :class:`Comm100NotFoundError` (it may already be gone)."""
        path = attachment_path(source, guid)
        response, attempts = await self._call("DELETE", path, None, retry)
        return ReportResult("delete", source, guid, None, None, response.status_code, attempts)

    async def aclose(self) -> None:
        await self._http.aclose()
        for name in _HTTP_LOGGERS:
            logging.getLogger(name).removeFilter(self._log_filter)

    async def __aenter__(self) -> Comm100Client:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _call(
        self, method: str, path: str, body: dict[str, Any] | None, retry: RetryPolicy | None
    ) -> tuple[httpx.Response, int]:
        attempts = 0

        async def attempt() -> httpx.Response:
            nonlocal attempts
            attempts += 1
            return await self._attempt(method, path, body)

        response = await call_with_retries(
            attempt, retry or self.retry, sleep=self._sleep, clock=self._clock, rng=self._rng
        )
        return response, attempts

    async def _attempt(self, method: str, path: str, body: dict[str, Any] | None) -> httpx.Response:
        try:
            token = self._token.get()
        except _NoToken as exc:
            raise Comm100AuthError(f"{method} {path}: {exc}", method=method, path=path) from None
        try:
            async with self.pacer.slot() as waited:
                if waited > 0:
                    log.debug("%s %s waited %.2fs for the Comm100 rate limit", method, path, waited)
                response = await self._http.request(
                    method, path, json=body, headers={"Authorization": f"Bearer {token}"}
                )
        except httpx.RequestError as exc:
            CALLS.labels(method, "transport").inc()
            detail = self._safe(f"{type(exc).__name__}: {exc}".rstrip(": "))
            raise Comm100TransportError(
                f"{method} {path}: no answer from Comm100 ({detail})", method=method, path=path
            ) from exc
        CALLS.labels(method, str(response.status_code)).inc()
        if response.is_success:
            log.info("%s %s -> %d", method, path, response.status_code)
            return response
        if response.status_code in (401, 403):
            self._token.invalidate()
        raise self._error_for(method, path, response)

    def _safe(self, text: str) -> str:
        return _truncate(redact(text, self._token.seen))

    def _error_for(self, method: str, path: str, response: httpx.Response) -> Comm100Error:
        code = response.status_code
        body = self._safe(response.text)
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        kind: type[Comm100Error]
        if code in (401, 403):
            kind, what = Comm100AuthError, "Comm100 refused our token"
        elif code == 404:
            kind, what = Comm100NotFoundError, "Comm100 knows no such attachment"
        elif code == 429:
            kind, what = Comm100RateLimitedError, "Comm100's rate limit was hit"
        elif code >= 500:
            kind, what = Comm100ServerError, "Comm100 server error"
        else:
            kind, what = Comm100RequestError, "unexpected answer from Comm100"
        reason = self._safe(response.reason_phrase)
        message = f"{method} {path}: HTTP {code} {reason}: {what}"
        if retry_after is not None:
            message += f" (Retry-After {retry_after:g}s)"
        if body:
            message += f"; body: {body}"
        log.debug("%s", message)
        return kind(message, method=method, path=path, status_code=code, body=body, retry_after=retry_after)
