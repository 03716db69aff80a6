"""The scanner's own settings reader gives the answers pydantic-settings gives for the same env.

The operator and webhook validate with :mod:`controller.settings`; the scanner reads the same
variables with :mod:`controller.scanconfig` to start faster. These tests hold the two to the same
values (and to refusing the same bad values), so a value that passes the operator never fails the
scan Job, and one that fails never turns into a silent default.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydantic
import pytest

from controller.scanconfig import FetchRules, ScannerConfig, read_scanner_env
from controller.settings import FetchPolicy, ScannerSettings


def _pydantic_reading(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> tuple[FetchRules, ScannerConfig]:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    policy, scanner = FetchPolicy(), ScannerSettings()
    return (
        FetchRules(tuple(policy.allowed_file_hosts), policy.allow_http, policy.max_file_size),
        ScannerConfig(
            scanner.scan_engine, scanner.clamd_address, scanner.clamscan_database, scanner.fetch_timeout_seconds
        ),
    )


AGREED = [
    {},
    {"FILESCAN_ALLOWED_FILE_HOSTS": "Files.Comm100.test, .cdn.test,,  "},
    {"FILESCAN_ALLOWED_FILE_HOSTS": ""},
    *({"FILESCAN_ALLOW_HTTP": value} for value in ["true", "false", "TRUE", "Yes", "no", "1", "0", "on", "t", "n"]),
    *({"FILESCAN_MAX_FILE_SIZE": value} for value in ["0", "2048", " 42 ", "+7", "1_000", str(2**40)]),
    {"FILESCAN_SCAN_ENGINE": "clamscan", "FILESCAN_CLAMSCAN_DATABASE": "/var/lib/clamav"},
    {"FILESCAN_SCAN_ENGINE": "clamd", "FILESCAN_CLAMD_ADDRESS": "unix:/run/clamd.sock"},
    {"FILESCAN_CLAMD_ADDRESS": ""},
    *({"FILESCAN_FETCH_TIMEOUT_SECONDS": value} for value in ["30.0", "5", "0.25", "1e2", " 3 ", "inf"]),
    {"filescan_allow_http": "true", "FileScan_Max_File_Size": "9"},  # names are case-insensitive
]

REFUSED = [
    {"FILESCAN_ALLOW_HTTP": value} for value in ["", "maybe", "2", " true"]
] + [
    {"FILESCAN_MAX_FILE_SIZE": value} for value in ["", "-1", "ten", "0x10", "1.5"]
] + [
    {"FILESCAN_SCAN_ENGINE": value} for value in ["", "ClamD", "sophos"]
] + [
    {"FILESCAN_FETCH_TIMEOUT_SECONDS": value} for value in ["", "0", "-3", "nan", "soon"]
]


@pytest.mark.parametrize("env", AGREED, ids=repr)
def test_both_readers_agree(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    assert read_scanner_env(env) == _pydantic_reading(monkeypatch, env)


@pytest.mark.parametrize("env", REFUSED, ids=repr)
def test_both_readers_refuse(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    with pytest.raises(pydantic.ValidationError):
        _pydantic_reading(monkeypatch, env)
    with pytest.raises(ValueError, match=next(iter(env)).upper()):
        read_scanner_env(env)


def test_only_filescan_variables_are_read() -> None:
    rules, config = read_scanner_env({"ALLOW_HTTP": "true", "SCAN_ENGINE": "clamscan", "PATH": "/bin"})
    assert (rules, config) == (FetchRules(), ScannerConfig())


def test_the_scanner_starts_without_pydantic() -> None:
    """The point of the separate reader: ``filescan scan`` never loads pydantic or pydantic-settings."""
    probe = (
        "import sys, controller.cli, controller.scanner; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pydantic', 'pydantic_settings', 'pydantic_core')))"
    )
    completed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                               cwd=Path(__file__).resolve().parents[2])
    assert completed.stdout.strip() == "[]"
