"""The Comm100 client against the simulator (real HTTP on 127.0.0.1) and ``httpx.MockTransport``.

Delays are asserted as the values handed to an injected sleep, never measured.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from controller.comm100 import (
    NO_RETRY,
    Comm100AuthError,
    Comm100Client,
    Comm100Error,
    Comm100NotFoundError,
    Comm100RateLimitedError,
    Comm100RequestError,
    Comm100ServerError,
    Comm100TransportError,
    Pacer,
    RetryPolicy,
    parse_retry_after,
    status_body,
)
from controller.settings import Comm100Settings
from devstack.comm100sim import Comm100Simulator
from tests.fixtures.comm100 import FakeTime, comm100_settings_at, comm100_settings_for

GUID = "12b76589-6ba7-4011-aa23-8779594aab11"
TOKEN = "tok-Sup3rSecretValue-never-log-me"


def offline_settings(**fields: Any) -> Comm100Settings:
    return comm100_settings_at("https://comm100.test", **({"comm100_token": TOKEN} | fields))


def mock_client(
    handler: Callable[[httpx.Request], httpx.Response],
    fake_time: FakeTime,
    *,
    retry: RetryPolicy | None = None,
    **fields: Any,
) -> Comm100Client:
    return Comm100Client(
        offline_settings(**fields),
        transport=httpx.MockTransport(handler),
        retry=retry,
        clock=fake_time.clock,
        sleep=fake_time.sleep,
        rng=random.Random(5),
    )


def calls_metric(method: str, code: str) -> float:
    return REGISTRY.get_sample_value("filescan_comm100_calls_total", {"method": method, "code": code}) or 0.0


# -- bodies, paths, auth -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("style", "available", "expected"),
    [
        ("available", True, {"status": "available"}),
        ("available", False, {"status": "unavailable"}),
        ("passed", True, {"status": "passed"}),
        ("passed", False, {"status": "failed"}),
        ("isAvailable", True, {"isAvailable": True}),
        ("isAvailable", False, {"isAvailable": False}),
    ],
)
async def test_report_sends_the_configured_vocabulary(
    comm100_sim: Comm100Simulator, comm100_token: str, style: Any, available: bool, expected: dict[str, Any]
) -> None:
    settings = comm100_settings_for(comm100_sim, comm100_token=comm100_token, comm100_status_style=style)
    async with Comm100Client(settings) as client:
        result = await client.report("livechat", GUID, available)

    assert status_body(style, available) == expected
    assert (result.action, result.body, result.status_code, result.attempts) == ("report", expected, 200, 1)
    [call] = comm100_sim.calls()
    assert (call.method, call.path, call.body, call.auth_ok) == (
        "PUT",
        f"/api/v2/livechat/attachments/{GUID}",
        expected,
        True,
    )


async def test_delete_uses_the_same_path(
    comm100_sim: Comm100Simulator, comm100_settings: Comm100Settings
) -> None:
    async with Comm100Client(comm100_settings) as client:
        result = await client.delete("ticket", GUID)

    assert (result.action, result.available, result.body) == ("delete", None, None)
    [call] = comm100_sim.calls()
    assert (call.method, call.source, call.guid, call.body, call.status) == (
        "DELETE",
        "ticket",
        GUID,
        None,
        204,
    )
    assert comm100_sim.attachments()[f"ticket/{GUID}"]["deleted"] is True


async def test_sends_the_bearer_token_and_json(fake_time: FakeTime) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"guid": GUID})

    async with mock_client(handler, fake_time, comm100_base_url="https://comm100.test/prefix/") as client:
        await client.report("ticket", GUID, True)

    [request] = seen
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Content-Type"] == "application/json"
    assert str(request.url) == f"https://comm100.test/prefix/api/v2/ticket/attachments/{GUID}"


@pytest.mark.parametrize("guid", ["../../v3/admin", "a/b", "", "a b", "x" * 129, "guid?x=1"])
async def test_refuses_guids_that_could_leave_the_path(fake_time: FakeTime, guid: str) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    async with mock_client(handler, fake_time) as client:
        with pytest.raises(ValueError, match="guid"):
            await client.report("ticket", guid, True)
    assert seen == []


async def test_token_file_is_reread_after_rotation(comm100_sim: Comm100Simulator, tmp_path: Path) -> None:
    # A Kubernetes Secret volume rotates by swapping a symlink: a new file (new inode) appears.
    token_file = tmp_path / "token"
    token_file.write_text("first-token-aaaaaaaaaaaa\n")
    comm100_sim.set_tokens("first-token-aaaaaaaaaaaa")
    settings = comm100_settings_for(
        comm100_sim, comm100_token="static-token-ignored", comm100_token_file=token_file
    )

    async with Comm100Client(settings, retry=NO_RETRY) as client:
        await client.report("ticket", GUID, True)
        comm100_sim.set_tokens("second-token-bbbbbbbbbbbbbbb")
        staged = tmp_path / "token.new"
        staged.write_text("second-token-bbbbbbbbbbbbbbb\n")
        staged.replace(token_file)
        await client.report("ticket", GUID, False)

    assert [call.auth_ok for call in comm100_sim.calls()] == [True, True]


async def test_token_rewritten_in_place_unnoticed_is_reread_after_a_401(
    comm100_sim: Comm100Simulator, tmp_path: Path
) -> None:
    # Same inode, size and mtime: the change is invisible to stat, so only the 401 reveals it.
    token_file = tmp_path / "token"
    token_file.write_text("token-one-AAAA")
    stamp = token_file.stat()
    comm100_sim.set_tokens("token-one-AAAA")
    settings = comm100_settings_for(comm100_sim, comm100_token_file=token_file)

    async with Comm100Client(settings, retry=NO_RETRY) as client:
        await client.report("ticket", GUID, True)
        comm100_sim.set_tokens("token-two-BBBB")
        token_file.write_text("token-two-BBBB")
        os.utime(token_file, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
        with pytest.raises(Comm100AuthError):
            await client.report("ticket", GUID, True)
        await client.report("ticket", GUID, True)

    assert [call.status for call in comm100_sim.calls()] == [200, 401, 200]


async def test_missing_token_is_an_auth_error(fake_time: FakeTime, tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("no call may be made without a token")

    async with mock_client(handler, fake_time, comm100_token=None) as client:
        with pytest.raises(Comm100AuthError, match="no Comm100 token"):
            await client.report("ticket", GUID, True)
    async with mock_client(handler, fake_time, comm100_token_file=tmp_path / "absent") as client:
        with pytest.raises(Comm100AuthError, match="token file"):
            await client.report("ticket", GUID, True)


# -- errors and retries --------------------------------------------------------------------------


async def test_three_503_then_200_succeeds_with_backoff(
    comm100_sim: Comm100Simulator, comm100_settings: Comm100Settings, fake_time: FakeTime
) -> None:
    comm100_sim.inject("status", status=503, times=3)
    policy = RetryPolicy(max_attempts=5, base_delay=1.0, max_delay=60.0)
    async with Comm100Client(
        comm100_settings, retry=policy, clock=fake_time.clock, sleep=fake_time.sleep, rng=random.Random(1)
    ) as client:
        result = await client.report("ticket", GUID, True)

    assert result.attempts == 4
    assert [call.status for call in comm100_sim.calls()] == [503, 503, 503, 200]
    assert len(fake_time.sleeps) == 3
    # Full jitter: each delay lies below its doubling cap (1, 2, 4 seconds).
    assert all(0 <= delay <= cap for delay, cap in zip(fake_time.sleeps, [1, 2, 4], strict=True))


async def test_retry_after_is_honoured(
    comm100_sim: Comm100Simulator, comm100_settings: Comm100Settings, fake_time: FakeTime
) -> None:
    comm100_sim.inject("status", status=429, retry_after=7)
    async with Comm100Client(comm100_settings, clock=fake_time.clock, sleep=fake_time.sleep) as client:
        result = await client.report("ticket", GUID, True)

    assert fake_time.sleeps == [7.0]
    assert result.attempts == 2
    assert [call.status for call in comm100_sim.calls()] == [429, 200]


async def test_retry_after_longer_than_the_budget_is_raised_for_requeue(
    comm100_sim: Comm100Simulator, comm100_settings: Comm100Settings, fake_time: FakeTime
) -> None:
    comm100_sim.inject("status", status=429, retry_after=120)
    policy = RetryPolicy(max_attempts=5, max_elapsed=60)
    async with Comm100Client(
        comm100_settings, retry=policy, clock=fake_time.clock, sleep=fake_time.sleep
    ) as client:
        with pytest.raises(Comm100RateLimitedError) as caught:
            await client.report("ticket", GUID, True)

    error = caught.value
    assert (error.status_code, error.retry_after, error.suggested_delay) == (429, 120.0, 120.0)
    assert error.retryable and error.transient
    assert fake_time.sleeps == []
    assert len(comm100_sim.calls()) == 1


async def test_server_error_gives_up_after_max_attempts_with_a_suggested_delay(
    comm100_sim: Comm100Simulator, comm100_settings: Comm100Settings, fake_time: FakeTime
) -> None:
    comm100_sim.inject("status", status=502, times=None, body="bad gateway " + "x" * 500)
    policy = RetryPolicy(max_attempts=3, base_delay=2.0)
    async with Comm100Client(
        comm100_settings, retry=policy, clock=fake_time.clock, sleep=fake_time.sleep, rng=random.Random(3)
    ) as client:
        with pytest.raises(Comm100ServerError) as caught:
            await client.report("ticket", GUID, True)

    error = caught.value
    assert (error.status_code, error.attempts) == (502, 3)
    assert len(comm100_sim.calls()) == 3 and len(fake_time.sleeps) == 2
    assert error.suggested_delay is not None and 0 <= error.suggested_delay <= 8.0
    assert error.body.startswith("bad gateway xxx") and len(error.body) < 250


async def test_404_is_final(
    comm100_sim: Comm100Simulator, comm100_settings: Comm100Settings, fake_time: FakeTime
) -> None:
    comm100_sim.inject("status", status=404, guid=GUID, times=None)
    async with Comm100Client(comm100_settings, clock=fake_time.clock, sleep=fake_time.sleep) as client:
        with pytest.raises(Comm100NotFoundError) as caught:
            await client.report("livechat", GUID, False)

    error = caught.value
    assert not error.retryable and error.suggested_delay is None and error.status_code == 404
    assert len(comm100_sim.calls()) == 1 and fake_time.sleeps == []


async def test_401_is_an_auth_error_retried_slowly(
    comm100_sim: Comm100Simulator, fake_time: FakeTime
) -> None:
    settings = comm100_settings_for(comm100_sim, comm100_token="not-the-token-the-sim-wants")
    policy = RetryPolicy(max_attempts=5, slow_delay=300.0)
    async with Comm100Client(settings, retry=policy, clock=fake_time.clock, sleep=fake_time.sleep) as client:
        with pytest.raises(Comm100AuthError) as caught:
            await client.report("ticket", GUID, True)

    error = caught.value
    assert error.status_code == 401 and error.retryable and not error.transient
    assert error.suggested_delay == 300.0
    # Not retried inline: nothing changes until the token does.
    assert [call.auth_ok for call in comm100_sim.calls()] == [False]
    assert fake_time.sleeps == []


async def test_403_is_an_auth_error_and_other_4xx_a_request_error(fake_time: FakeTime) -> None:
    answers = iter([403, 400, 302])

    def handler(request: httpx.Request) -> httpx.Response:
        code = next(answers)
        return httpx.Response(code, headers={"Location": "https://elsewhere.test/"} if code == 302 else {})

    async with mock_client(handler, fake_time) as client:
        with pytest.raises(Comm100AuthError):
            await client.report("ticket", GUID, True)
        for code in (400, 302):  # a redirect is never followed: the token must not travel
            with pytest.raises(Comm100RequestError) as caught:
                await client.report("ticket", GUID, True)
            assert caught.value.status_code == code
            assert caught.value.retryable and not caught.value.transient


async def test_timeout_is_a_transport_error(fake_time: FakeTime) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    before = calls_metric("PUT", "transport")
    async with mock_client(handler, fake_time, retry=RetryPolicy(max_attempts=3)) as client:
        with pytest.raises(Comm100TransportError) as caught:
            await client.report("ticket", GUID, True)

    error = caught.value
    assert error.status_code is None and error.transient and error.attempts == 3
    assert isinstance(error.__cause__, httpx.ReadTimeout)
    assert "ReadTimeout" in str(error)
    assert len(fake_time.sleeps) == 2
    assert calls_metric("PUT", "transport") - before == 3


async def test_stalled_api_times_out_as_a_transport_error(
    comm100_sim: Comm100Simulator, comm100_token: str
) -> None:
    comm100_sim.inject("stall", seconds=30)
    settings = comm100_settings_for(comm100_sim, comm100_token=comm100_token, comm100_timeout_seconds=0.3)
    async with Comm100Client(settings, retry=NO_RETRY) as client:
        with pytest.raises(Comm100TransportError) as caught:
            await client.report("ticket", GUID, True)
    assert isinstance(caught.value.__cause__, httpx.TimeoutException)


async def test_api_down_is_a_transport_error(
    comm100_sim: Comm100Simulator, comm100_settings: Comm100Settings
) -> None:
    comm100_sim.down()
    async with Comm100Client(comm100_settings, retry=NO_RETRY) as client:
        with pytest.raises(Comm100TransportError) as caught:
            await client.delete("ticket", GUID)
    assert caught.value.suggested_delay is not None
    assert [(call.status, call.fault) for call in comm100_sim.calls()] == [(0, "drop")]


def test_retry_after_parses_seconds_and_http_dates() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("7", now=now) == 7.0
    assert parse_retry_after(" 2.5 ", now=now) == 2.5
    assert parse_retry_after("Thu, 01 Jan 2026 12:01:30 GMT", now=now) == 90.0
    assert parse_retry_after("Thu, 01 Jan 2026 11:00:00 GMT", now=now) == 0.0
    assert parse_retry_after("-3", now=now) == 0.0
    assert parse_retry_after("soon", now=now) is None
    assert parse_retry_after(None) is None


async def test_http_date_retry_after_on_503_is_honoured(fake_time: FakeTime) -> None:
    later = datetime.now(UTC).timestamp() + 3600
    answers = [
        httpx.Response(
            503,
            headers={"Retry-After": datetime.fromtimestamp(later, UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")},
        ),
        httpx.Response(200),
    ]
    async with mock_client(
        lambda request: answers.pop(0), fake_time, retry=RetryPolicy(max_elapsed=7200)
    ) as client:
        await client.report("ticket", GUID, True)
    [delay] = fake_time.sleeps
    assert 3500 < delay <= 3600  # the date is honoured, not replaced by a short backoff


# -- pacing ----------------------------------------------------------------------------------------


def starts_in_any_window(starts: list[float], period: float) -> int:
    starts = sorted(starts)
    return max(sum(1 for t in starts if first <= t < first + period) for first in starts)


async def test_pacer_never_exceeds_n_per_period_under_a_burst(fake_time: FakeTime) -> None:
    import asyncio

    pacer = Pacer(5, 10.0, clock=fake_time.clock, sleep=fake_time.sleep)
    granted: list[float] = []

    async def one() -> None:
        await pacer.acquire()
        granted.append(fake_time.clock())

    await asyncio.gather(*(one() for _ in range(23)))

    assert len(granted) == 23
    assert starts_in_any_window(granted, 10.0) == 5
    assert granted[:5] == [1000.0] * 5  # a burst of N goes at once
    assert max(granted) == 1040.0  # and no slower than the limit needs


async def test_client_calls_are_paced_by_the_configured_rate(fake_time: FakeTime) -> None:
    import asyncio

    sent_at: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent_at.append(fake_time.clock())
        return httpx.Response(503) if len(sent_at) % 4 == 0 else httpx.Response(200)

    policy = RetryPolicy(max_attempts=5, max_elapsed=3600)  # pacing waits count against the budget
    async with mock_client(handler, fake_time, retry=policy, comm100_rate="3/1m") as client:
        await asyncio.gather(*(client.report("ticket", f"guid-{i}", True) for i in range(10)))

    # Retries take slots too: more than ten calls were made, never more than three a minute.
    assert len(sent_at) > 10
    assert starts_in_any_window(sent_at, 60.0) == 3


# -- secrets, logs and metrics -------------------------------------------------------------------------


async def test_tokens_never_reach_errors_or_logs(
    fake_time: FakeTime, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.DEBUG)
    file_token = "file-token-ZZZZ-also-secret"
    token_file = tmp_path / "token"
    token_file.write_text(file_token)
    answers = iter([500, 500, 401, 400])

    def handler(request: httpx.Request) -> httpx.Response:
        # A careless server echoing the credential back, in the body and the reason.
        echoed = request.headers["Authorization"]
        return httpx.Response(
            next(answers),
            text=f"denied for {echoed}; raw={echoed.removeprefix('Bearer ')}",
            extensions={"reason_phrase": echoed.encode()},
        )

    errors: list[Comm100Error] = []
    async with mock_client(
        handler, fake_time, retry=RetryPolicy(max_attempts=2), comm100_token_file=token_file
    ) as client:
        for _ in range(3):
            with pytest.raises(Comm100Error) as caught:
                await client.report("ticket", GUID, True)
            errors.append(caught.value)

    assert [type(e) for e in errors] == [Comm100ServerError, Comm100AuthError, Comm100RequestError]
    assert "retry 1" in caplog.text  # the retry was logged, so the check below looked at something
    for text in [
        caplog.text,
        *(str(e) for e in errors),
        *(repr(e) for e in errors),
        *(e.body for e in errors),
    ]:
        assert file_token not in text
        assert TOKEN not in text
        assert "ZZZZ" not in text
    assert "***" in errors[0].body


async def test_tokens_never_reach_http_debug_logs(
    comm100_sim: Comm100Simulator, comm100_token: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = comm100_settings_for(comm100_sim, comm100_token=comm100_token)
    async with Comm100Client(settings, retry=NO_RETRY) as client:
        await client.report("ticket", GUID, True)
        comm100_sim.set_tokens("another-token")
        with pytest.raises(Comm100AuthError):
            await client.report("ticket", GUID, True)

    assert any(record.name.startswith("httpcore") for record in caplog.records)  # debug logs were on
    assert comm100_token not in caplog.text


async def test_calls_are_counted_by_method_and_code(
    comm100_sim: Comm100Simulator, comm100_settings: Comm100Settings, fake_time: FakeTime
) -> None:
    before = {code: calls_metric("PUT", code) for code in ("503", "200")}
    before_delete = calls_metric("DELETE", "204")
    comm100_sim.inject("status", status=503, method="PUT")
    async with Comm100Client(comm100_settings, clock=fake_time.clock, sleep=fake_time.sleep) as client:
        await client.report("ticket", GUID, True)
        await client.delete("ticket", GUID)

    assert calls_metric("PUT", "503") - before["503"] == 1
    assert calls_metric("PUT", "200") - before["200"] == 1
    assert calls_metric("DELETE", "204") - before_delete == 1


async def test_pacer_holds_a_slot_until_a_period_after_the_call_ended(fake_time: FakeTime) -> None:
    # A call that reached Comm100 late must still count in Comm100's window: the slot frees a full
    # period after the call ended, not after it started.
    pacer = Pacer(1, 10.0, clock=fake_time.clock, sleep=fake_time.sleep)
    async with pacer.slot():
        await fake_time.sleep(4.0)  # the call itself takes 4 s
    assert await pacer.acquire() == 10.0
