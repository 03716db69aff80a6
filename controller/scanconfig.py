"""The scanner's settings, read from ``FILESCAN_*`` with the standard library alone.

Design decisions:

* ``filescan scan`` starts once per file, and most attachments are small, so its start-up is most
  of a scan's cost. Importing pydantic and pydantic-settings took about 100 ms of a ~240 ms start
  on the benchmark machine (about as much CPU as streaming 50 MB), paid by every scan Job. The
  scanner's seven settings are therefore read here, without them.
* :class:`controller.settings.FetchPolicy` and :class:`controller.settings.ScannerSettings` remain
  the definition: the operator and webhook validate against them, and the operator writes these
  variables into each scan Job in canonical form. This reader follows the same names, defaults and
  rules, and a test holds the two readers to the same answers, canonical forms and the usual
  hand-typed ones (``yes``, ``1``, `` 42 ``) alike.
* A bad value raises :class:`ValueError` naming the variable, so a hand-run scan fails with exit 3
  and a message, never with a default silently used.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

ScanEngine = Literal["clamd", "clamscan"]
SCAN_ENGINES: tuple[ScanEngine, ...] = ("clamd", "clamscan")

PREFIX = "FILESCAN_"
DEFAULT_MAX_FILE_SIZE = 100 * 1024 * 1024
DEFAULT_CLAMD_ADDRESS = "tcp://clamd:3310"
DEFAULT_FETCH_TIMEOUT_SECONDS = 30.0

_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})


@dataclass(frozen=True)
class FetchRules:
    """Which URLs the scanner may fetch (the fields of :class:`controller.settings.FetchPolicy`)."""

    allowed_file_hosts: tuple[str, ...] = ()
    allow_http: bool = False
    max_file_size: int = DEFAULT_MAX_FILE_SIZE


@dataclass(frozen=True)
class ScannerConfig:
    """How the scanner reaches its engine (the fields of :class:`controller.settings.ScannerSettings`)."""

    scan_engine: ScanEngine = "clamd"
    clamd_address: str = DEFAULT_CLAMD_ADDRESS
    clamscan_database: Path | None = None
    fetch_timeout_seconds: float = DEFAULT_FETCH_TIMEOUT_SECONDS


def read_scanner_env(environ: Mapping[str, str] | None = None) -> tuple[FetchRules, ScannerConfig]:
    """The scanner's settings from ``environ`` (default ``os.environ``); names are case-insensitive,
    as pydantic-settings reads them."""
    env = _Env(os.environ if environ is None else environ)
    rules = FetchRules(
        allowed_file_hosts=env.hosts("ALLOWED_FILE_HOSTS"),
        allow_http=env.boolean("ALLOW_HTTP", default=False),
        max_file_size=env.integer("MAX_FILE_SIZE", default=DEFAULT_MAX_FILE_SIZE, minimum=0),
    )
    config = ScannerConfig(
        scan_engine=env.engine("SCAN_ENGINE"),
        clamd_address=env.text("CLAMD_ADDRESS", default=DEFAULT_CLAMD_ADDRESS),
        clamscan_database=env.path("CLAMSCAN_DATABASE"),
        fetch_timeout_seconds=env.positive_float("FETCH_TIMEOUT_SECONDS", default=DEFAULT_FETCH_TIMEOUT_SECONDS),
    )
    return rules, config


class _Env:
    def __init__(self, environ: Mapping[str, str]) -> None:
        self._values = {key.upper(): value for key, value in environ.items() if key.upper().startswith(PREFIX)}

    def get(self, name: str) -> str | None:
        return self._values.get(PREFIX + name)

    @staticmethod
    def _bad(name: str, value: str, expected: str) -> ValueError:
        return ValueError(f"{PREFIX}{name}={value!r} is not {expected}")

    def text(self, name: str, *, default: str) -> str:
        value = self.get(name)
        return default if value is None else value

    def hosts(self, name: str) -> tuple[str, ...]:
        value = self.get(name)
        if value is None:
            return ()
        return tuple(host.strip().lower() for host in value.split(",") if host.strip())

    def boolean(self, name: str, *, default: bool) -> bool:
        value = self.get(name)
        if value is None:
            return default
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        raise self._bad(name, value, "a boolean (true or false)")

    def integer(self, name: str, *, default: int, minimum: int) -> int:
        value = self.get(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            raise self._bad(name, value, "a whole number") from None
        if number < minimum:
            raise self._bad(name, value, f"at least {minimum}")
        return number

    def positive_float(self, name: str, *, default: float) -> float:
        value = self.get(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            raise self._bad(name, value, "a number") from None
        if not number > 0:  # also refuses nan
            raise self._bad(name, value, "a number above 0")
        return number

    def engine(self, name: str) -> ScanEngine:
        value = self.get(name)
        if value is None:
            return "clamd"
        if value not in SCAN_ENGINES:
            raise self._bad(name, value, " or ".join(SCAN_ENGINES))
        return value

    def path(self, name: str) -> Path | None:
        value = self.get(name)
        return None if value is None else Path(value)
