"""Unit tests build settings from their defaults: nothing may come from the shell's ``FILESCAN_*``."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _no_filescan_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key in list(os.environ):
        if key.startswith("FILESCAN_"):
            monkeypatch.delenv(key)
    yield
