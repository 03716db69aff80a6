"""Settings for every filescan process, read from ``FILESCAN_*`` environment variables.

Design decisions:

* One tree of small groups (fetch policy, webhook, scanner, scan Job, policy, Comm100, operator),
  each a pydantic-settings class reading the same flat ``FILESCAN_`` prefix, because the variable
  names are part of the public contract (Helm values and the scan Job's env use them) and nested
  delimiters would make them ugly. :func:`load_settings` builds the tree; nothing is created at
  import time, and processes receive their settings by injection.
* List-valued settings are comma-separated (``a,b,c``), the form operators type into Helm values.
* Secrets are ``SecretStr`` so they never print; placeholder values are refused.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from controller.scanconfig import (
    DEFAULT_CLAMD_ADDRESS,
    DEFAULT_FETCH_TIMEOUT_SECONDS,
    DEFAULT_MAX_FILE_SIZE,
    ScanEngine,
)

_DURATION = re.compile(r"^\s*(?:(\d+)d)?\s*(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:(\d+)s)?\s*$")
_PLACEHOLDERS = {"changeme", "change-me", "changethis", "secret", "token", "xxx", "todo"}

StatusStyle = Literal["available", "passed", "isAvailable"]


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def parse_duration(value: Any) -> Any:
    """Accept ``96h``, ``1h30m``, ``45s``, ``2d`` or a plain number of seconds."""
    if isinstance(value, int | float):
        return dt.timedelta(seconds=value)
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"\d+(\.\d+)?", text):
            return dt.timedelta(seconds=float(text))
        match = _DURATION.fullmatch(text)
        if match and any(match.groups()):
            days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
            return dt.timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    return value


CsvList = Annotated[list[str], NoDecode]


class _Group(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FILESCAN_", extra="ignore", frozen=True)


class FetchPolicy(_Group):
    """Which file URLs may be fetched, shared by the webhook (checked at the door) and the scanner."""

    allowed_file_hosts: CsvList = Field(default_factory=list)
    """Host names a ``fileURL`` may point at: exact names, or ``.suffix`` entries that match any
    subdomain. Empty means no URL is accepted. A listed host is trusted even if it is an IP or
    resolves to a private address; no other host ever is."""

    allow_http: bool = False
    """Accept plain ``http`` URLs as well as ``https``. Off by default: only for local testing."""

    max_file_size: int = Field(default=DEFAULT_MAX_FILE_SIZE, ge=0)
    """Largest file scanned, in bytes (default 100 MiB). Larger uploads are ``skipped`` by the
    operator and refused by the scanner even when Content-Length lies."""

    @field_validator("allowed_file_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        hosts = _split_csv(value)
        return [host.lower() for host in hosts] if isinstance(hosts, list) else hosts


class WebhookSettings(_Group):
    """The ``filescan webhook`` process."""

    namespace: str = "filescan"
    """Namespace the FileScans are created in."""

    webhook_tokens: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    """Shared secrets Comm100 presents (comma-separated; several at once for rotation)."""

    webhook_tokens_file: Path | None = None
    """A file of further tokens (comma- or newline-separated), e.g. a mounted Secret: re-read when it
    changes, so tokens rotate without a restart. Tokens shorter than 16 characters are ignored."""

    sync_wait_seconds: float = Field(default=0.0, ge=0, le=25)
    """When above 0, wait up to this long for a verdict and answer ``passed``/``failed`` in the
    webhook response; otherwise (the default, Comm100's recommendation) answer ``delay``."""

    store_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    """Longest wait, in seconds, for the apiserver to store a FileScan before answering 503 (so
    Comm100 reposts). Short, because Comm100 gives up on a slow answer and reposts anyway."""

    kube_max_connections: int = Field(default=8, ge=1, le=256)
    """Most connections from one webhook process to the apiserver (default 8). Requests beyond it
    wait for a free one, within ``store_timeout_seconds``. More parallel creates do not make the
    apiserver quicker: 8 and 32 measured the same within noise at 32 events in flight."""

    retry_after_seconds: int = Field(default=60, ge=1)
    """``Retry-After`` sent with a 503 when the FileScan could not be stored, in seconds (default
    60, Comm100's second repost interval; Comm100 keeps its own schedule, a proxy may honour it)."""

    @field_validator("webhook_tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("webhook_tokens")
    @classmethod
    def _refuse_placeholders(cls, tokens: list[SecretStr]) -> list[SecretStr]:
        for token in tokens:
            raw = token.get_secret_value()
            if raw.lower() in _PLACEHOLDERS or len(raw) < 16:
                raise ValueError("webhook tokens must be at least 16 characters and not a placeholder")
        return tokens


class ScannerSettings(_Group):
    """The ``filescan scan`` program inside each scan Job (which reads these, and the fetch policy,
    with :mod:`controller.scanconfig` to start faster)."""

    scan_engine: ScanEngine = "clamd"
    """``clamd`` streams to a clamd Service (fast; the default); ``clamscan`` loads the DB itself."""

    clamd_address: str = DEFAULT_CLAMD_ADDRESS
    """Where clamd listens: ``tcp://HOST:PORT`` or ``unix:/path``."""

    clamscan_database: Path | None = None
    """Signature database directory for the ``clamscan`` engine (clamscan's default when unset)."""

    fetch_timeout_seconds: float = Field(default=DEFAULT_FETCH_TIMEOUT_SECONDS, gt=0)
    """Connect timeout, and longest silence while reading, when downloading the file (seconds,
    default 30). A server that stalls longer fails the attempt as transient (exit 2); the Job's
    ``activeDeadlineSeconds`` bounds the whole scan."""


class ScanJobSettings(_Group):
    """The scan Job the operator builds for each attempt."""

    scan_image: str = "ghcr.io/comm100/filescan-operator:0.1.0"
    """Image of the scan container; its entrypoint is ``filescan``."""

    scan_command: CsvList = Field(default_factory=lambda: ["filescan", "scan"])
    """Command that starts the scanner inside the image (comma-separated)."""

    scan_active_deadline: dt.timedelta = dt.timedelta(minutes=10)
    """Upper bound on one scan attempt (``activeDeadlineSeconds``)."""

    scan_ttl_after_finished: dt.timedelta = dt.timedelta(hours=1)
    """How long a finished Job and its pod are kept for inspection (``ttlSecondsAfterFinished``)."""

    scan_cpu_request: str = "100m"
    scan_cpu_limit: str = "1"
    scan_memory_request: str = "64Mi"
    scan_memory_limit: str = "256Mi"
    scan_scratch_size: str = "1Gi"
    """Size limit of the scratch emptyDir (only the ``clamscan`` engine writes there)."""

    scan_node_selector: dict[str, str] = Field(default_factory=dict)
    """nodeSelector for scan pods (JSON), e.g. the autoscaled scan node pool's label."""

    scan_tolerations: list[dict[str, Any]] = Field(default_factory=list)
    """Tolerations for scan pods (JSON list), e.g. for a tainted scan node pool."""

    scan_affinity: dict[str, Any] = Field(default_factory=dict)
    """Affinity for scan pods (JSON)."""

    scan_priority_class_name: str = ""
    """priorityClassName for scan pods; empty means none."""

    kueue_queue_name: str = ""
    """When set, Jobs are created suspended with ``kueue.x-k8s.io/queue-name`` and Kueue admits them."""

    @field_validator("scan_command", mode="before")
    @classmethod
    def _split_command(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("scan_active_deadline", "scan_ttl_after_finished", mode="before")
    @classmethod
    def _durations(cls, value: Any) -> Any:
        return parse_duration(value)


class PolicySettings(_Group):
    """What each verdict means for Comm100."""

    on_infected: Literal["unavailable", "delete"] = "unavailable"
    on_error: Literal["unavailable", "available"] = "unavailable"
    """Fail closed by default: a file we could not scan is not made available."""
    on_skipped: Literal["unavailable", "available"] = "unavailable"
    blocked_extensions: CsvList = Field(default_factory=list)
    """Extensions never scanned and reported as ``on_skipped`` (without the dot, case-insensitive)."""

    @field_validator("blocked_extensions", mode="before")
    @classmethod
    def _normalise_extensions(cls, value: Any) -> Any:
        items = _split_csv(value)
        return [item.lower().lstrip(".") for item in items] if isinstance(items, list) else items


class Comm100Settings(_Group):
    """The Comm100 REST API the operator reports to."""

    comm100_base_url: str = "https://hosted.comm100.com"
    """API base URL of the customer's data centre."""

    comm100_token: SecretStr | None = None
    comm100_token_file: Path | None = None
    """File holding the bearer token (a mounted Secret); re-read when it changes. Wins over the token."""

    comm100_status_style: StatusStyle = "available"
    """Body vocabulary: ``available`` (the seed), ``passed``, or ``isAvailable``."""

    comm100_rate: str = "300/5m"
    """Most calls per period, paced evenly (Comm100 allows about 300 per 5 minutes per client IP)."""

    comm100_timeout_seconds: float = Field(default=10.0, gt=0)

    @property
    def rate_limit(self) -> tuple[int, float]:
        """The rate as (calls, period in seconds)."""
        calls, _, period = self.comm100_rate.partition("/")
        seconds = parse_duration(period or "1s")
        if not isinstance(seconds, dt.timedelta):
            raise ValueError(f"bad FILESCAN_COMM100_RATE: {self.comm100_rate}")
        return int(calls), seconds.total_seconds()

    @field_validator("comm100_rate")
    @classmethod
    def _check_rate(cls, value: str) -> str:
        calls, sep, period = value.partition("/")
        if not sep or not calls.strip().isdigit() or int(calls) <= 0:
            raise ValueError("expected CALLS/PERIOD, e.g. 300/5m")
        if not isinstance(parse_duration(period), dt.timedelta):
            raise ValueError("expected CALLS/PERIOD, e.g. 300/5m")
        return value


class OperatorSettings(_Group):
    """The ``filescan operator`` process."""

    namespace: str = "filescan"
    max_concurrent_scans: int = Field(default=10, ge=1)
    """Most unfinished scan Jobs at once; the rest wait ``Queued`` in FIFO order."""
    max_attempts: int = Field(default=3, ge=1)
    """Scan attempts before the verdict becomes ``error``; permanent errors are not retried."""
    retention: dt.timedelta = dt.timedelta(hours=96)
    """How long a finished FileScan is kept; longer than Comm100's ~3-day repost window."""
    peering_lifetime: dt.timedelta = dt.timedelta(seconds=60)
    """How long a silent replica still counts as alive in kopf's peering, and so roughly how long
    a standby waits before taking over from an active replica that died without a word."""

    @field_validator("retention", "peering_lifetime", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return parse_duration(value)


class Settings(BaseModel):
    """Every group, for processes that need several."""

    model_config = {"frozen": True}

    fetch: FetchPolicy
    webhook: WebhookSettings
    scanner: ScannerSettings
    job: ScanJobSettings
    policy: PolicySettings
    comm100: Comm100Settings
    operator: OperatorSettings


def load_settings(**overrides: Any) -> Settings:
    """Read all groups from the environment; ``overrides`` replaces whole groups (for tests)."""
    groups: dict[str, Any] = {
        "fetch": FetchPolicy,
        "webhook": WebhookSettings,
        "scanner": ScannerSettings,
        "job": ScanJobSettings,
        "policy": PolicySettings,
        "comm100": Comm100Settings,
        "operator": OperatorSettings,
    }
    return Settings(**{name: overrides.get(name) or factory() for name, factory in groups.items()})
