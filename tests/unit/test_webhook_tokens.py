"""The webhook's token source: a mounted Secret rotates without a restart."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydantic import SecretStr

from controller.webhook import WebhookTokens

OLD = "old-token-0123456789abcdef"
NEW = "new-token-fedcba9876543210"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def rewrite(path: Path, text: str) -> None:
    """Replace the file as the kubelet does for a Secret volume: a new file, a new inode."""
    fresh = path.with_name(path.name + ".new")
    fresh.write_text(text)
    fresh.replace(path)


def test_inline_tokens_and_file_tokens_are_both_accepted(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"{NEW}\n")
    tokens = WebhookTokens([SecretStr(OLD)], path)
    assert tokens.current() == [OLD.encode(), NEW.encode()]


def test_a_rotated_file_takes_effect_after_the_check_interval(tmp_path: Path) -> None:
    path, clock = tmp_path / "tokens", Clock()
    path.write_text(OLD)
    tokens = WebhookTokens([], path, clock)
    assert tokens.current() == [OLD.encode()]

    rewrite(path, f"{OLD},{NEW}")
    assert tokens.current() == [OLD.encode()]  # not looked at again within the interval
    clock.now += WebhookTokens.CHECK_INTERVAL
    assert tokens.current() == [OLD.encode(), NEW.encode()]

    rewrite(path, NEW)
    clock.now += WebhookTokens.CHECK_INTERVAL
    assert tokens.current() == [NEW.encode()]  # the old token is refused from now on


def test_a_missing_file_keeps_the_last_tokens(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path, clock = tmp_path / "tokens", Clock()
    path.write_text(OLD)
    tokens = WebhookTokens([], path, clock)
    path.unlink()
    clock.now += WebhookTokens.CHECK_INTERVAL
    with caplog.at_level(logging.WARNING):
        assert tokens.current() == [OLD.encode()]
    assert "unreadable" in caplog.text
    assert OLD not in caplog.text


def test_short_tokens_in_the_file_are_ignored_and_never_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"short1\n{NEW}\n\n , ")
    with caplog.at_level(logging.INFO):
        tokens = WebhookTokens([], path)
    assert tokens.current() == [NEW.encode()]
    assert "1 token(s) shorter" in caplog.text
    assert "short1" not in caplog.text and NEW not in caplog.text
