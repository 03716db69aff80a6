"""The reconciler's pure parts: the keyed work queue, and admission's view of its caches.

No cluster and no Comm100: ``Reconciler.waiting`` and ``unfinished_jobs`` read only the in-memory
caches, so the clients are never touched (they are ``None`` here, typed away with ``cast``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest

from controller.comm100 import Comm100Client
from controller.kube import KubeClient
from controller.reconciler import Reconciler, WorkQueue
from controller.settings import (
    Comm100Settings,
    FetchPolicy,
    OperatorSettings,
    PolicySettings,
    ScanJobSettings,
    ScannerSettings,
    Settings,
    WebhookSettings,
)

NOW = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)
SHORT = 0.05  # how long to wait for something that must not happen: a queue that stays empty


# ---- WorkQueue -------------------------------------------------------------------------------


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def get(queue: WorkQueue, timeout: float = 2.0) -> str:
    """The next key, failing the test (not hanging it) when none comes in time."""
    try:
        return await asyncio.wait_for(queue.get(), timeout)
    except TimeoutError:
        raise AssertionError(f"no key came out of the queue within {timeout}s") from None


async def assert_empty(queue: WorkQueue) -> None:
    with pytest.raises(TimeoutError):
        key = await asyncio.wait_for(queue.get(), SHORT)
        pytest.fail(f"expected an empty queue, got {key!r}")


async def test_keys_come_out_in_order_and_deduplicated() -> None:
    queue = WorkQueue()
    for key in ("a", "b", "a", "c", "b", "a"):
        queue.add(key)
    assert [await get(queue) for _ in range(3)] == ["a", "b", "c"]
    await assert_empty(queue)


async def test_a_key_added_while_processing_waits_for_done_and_comes_back_once() -> None:
    queue = WorkQueue()
    queue.add("a")
    assert await get(queue) == "a"
    queue.add("a")
    queue.add("a")
    queue.add("b")
    # Only one worker at a time per key: "a" is not handed out again while it is being processed.
    assert await get(queue) == "b"
    await assert_empty(queue)
    queue.done("b")
    queue.done("a")
    assert await get(queue) == "a"
    await assert_empty(queue)
    queue.done("a")
    await assert_empty(queue)


async def test_done_without_a_re_add_does_not_requeue() -> None:
    queue = WorkQueue()
    queue.add("a")
    assert await get(queue) == "a"
    queue.done("a")
    await assert_empty(queue)
    queue.add("a")  # a new add after done is processed again
    assert await get(queue) == "a"


@pytest.mark.parametrize("delay", [0.0, -1.0])
async def test_no_delay_is_immediate(delay: float) -> None:
    queue = WorkQueue(clock=FakeClock())
    queue.add("a", delay)
    assert await get(queue, timeout=SHORT * 4) == "a"


@pytest.fixture
async def delays() -> AsyncIterator[tuple[WorkQueue, FakeClock]]:
    """A queue on a fake clock with its delay loop running; the loop is cancelled afterwards."""
    clock = FakeClock()
    queue = WorkQueue(clock=clock)
    runner = asyncio.create_task(queue.run_delays())
    try:
        yield queue, clock
    finally:
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner


async def test_a_delayed_key_comes_back_when_its_clock_says_so(delays: tuple[WorkQueue, FakeClock]) -> None:
    queue, clock = delays
    # The delay is short in real time, so the loop looks again and again: while the (fake) clock
    # stands still, the key must stay away however often the loop wakes.
    queue.add("a", delay=SHORT)
    for _ in range(4):
        await assert_empty(queue)
    clock.now += SHORT / 2
    await assert_empty(queue)
    clock.now += SHORT
    assert await get(queue) == "a"
    await assert_empty(queue)


async def test_delayed_keys_come_back_in_due_order(delays: tuple[WorkQueue, FakeClock]) -> None:
    queue, clock = delays
    queue.add("late", delay=0.3)
    queue.add("early", delay=0.1)
    queue.add("middle", delay=0.2)
    clock.now += 0.15
    assert await get(queue) == "early"
    await assert_empty(queue)
    clock.now += 1
    assert [await get(queue), await get(queue)] == ["middle", "late"]


async def test_a_delayed_key_already_queued_is_not_duplicated(delays: tuple[WorkQueue, FakeClock]) -> None:
    queue, clock = delays
    queue.add("a", delay=SHORT)
    queue.add("a")
    clock.now += 1
    assert await get(queue) == "a"
    await assert_empty(queue)


async def test_a_delayed_key_that_comes_back_while_processing_waits_for_done(
    delays: tuple[WorkQueue, FakeClock],
) -> None:
    queue, clock = delays
    queue.add("a")
    assert await get(queue) == "a"
    queue.add("a", delay=SHORT)
    clock.now += 1
    await assert_empty(queue)  # due, but still being processed
    queue.done("a")
    assert await get(queue) == "a"


# ---- Reconciler: admission's view of the caches ----------------------------------------------


def reconciler(*, max_file_size: int = 1000, blocked: tuple[str, ...] = ("exe",)) -> Reconciler:
    settings = Settings(
        fetch=FetchPolicy(max_file_size=max_file_size),
        webhook=WebhookSettings(),
        scanner=ScannerSettings(),
        job=ScanJobSettings(),
        policy=PolicySettings(blocked_extensions=list(blocked)),
        comm100=Comm100Settings(),
        operator=OperatorSettings(max_concurrent_scans=2),
    )
    return Reconciler(settings=settings, kube=cast(KubeClient, None), comm100=cast(Comm100Client, None))


def at(seconds: int) -> str:
    return (NOW + dt.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def filescan(name: str, created: int, *, file_name: str = "a.pdf", size: int = 10, deleting: bool = False,
             **status: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "scans", "uid": f"uid-{name}",
                            "creationTimestamp": at(created), "resourceVersion": "1", "generation": 1}
    if deleting:
        meta["deletionTimestamp"] = at(created + 1)
    body: dict[str, Any] = {"metadata": meta, "spec": {"source": "ticket", "fileName": file_name,
                                                       "fileExtension": file_name.rpartition(".")[2],
                                                       "fileSize": size}}
    if status:
        body["status"] = status
    return body


def with_filescans(r: Reconciler, *items: dict[str, Any]) -> Reconciler:
    for item in items:
        r.filescans[item["metadata"]["name"]] = item
    return r


def names(items: list[dict[str, Any]]) -> list[str]:
    return [item["metadata"]["name"] for item in items]


def test_nothing_waits_in_an_empty_cache() -> None:
    assert reconciler().waiting(NOW) == ([], None)


def test_oldest_first_by_queued_at_else_creation() -> None:
    r = with_filescans(
        reconciler(),
        filescan("c", created=-100, phase="Queued", queuedAt=at(-10)),  # oldest object, queued latest
        filescan("a", created=-50),  # never queued: its creation counts
        filescan("b", created=-90, phase="Queued", queuedAt=at(-60)),
    )
    ready, due = r.waiting(NOW)
    assert names(ready) == ["b", "a", "c"]
    assert due is None


def test_ties_are_broken_by_name() -> None:
    r = with_filescans(reconciler(), filescan("z", created=-5), filescan("m", created=-5), filescan("n", created=-5))
    assert names(r.waiting(NOW)[0]) == ["m", "n", "z"]


@pytest.mark.parametrize("phase", ["Scanning", "Reporting", "Done", "Failed"])
def test_only_new_and_queued_filescans_wait(phase: str) -> None:
    r = with_filescans(
        reconciler(),
        filescan("busy", created=-100, phase=phase),
        filescan("new", created=-10),
        filescan("queued", created=-20, phase="Queued", queuedAt=at(-20)),
    )
    assert names(r.waiting(NOW)[0]) == ["queued", "new"]


def test_deleted_filescans_do_not_wait() -> None:
    r = with_filescans(reconciler(), filescan("going", created=-100, deleting=True), filescan("new", created=-10))
    assert names(r.waiting(NOW)[0]) == ["new"]


def test_backed_off_filescans_wait_for_their_time_and_say_when() -> None:
    r = with_filescans(
        reconciler(),
        filescan("later", created=-300, phase="Queued", queuedAt=at(-300), attempts=1, nextAttemptAt=at(60)),
        filescan("soon", created=-200, phase="Queued", queuedAt=at(-200), attempts=1, nextAttemptAt=at(20)),
        filescan("mid", created=-150, phase="Queued", queuedAt=at(-150), attempts=1, nextAttemptAt=at(40)),
        filescan("due", created=-100, phase="Queued", queuedAt=at(-100), attempts=1, nextAttemptAt=at(0)),
        filescan("past", created=-90, phase="Queued", queuedAt=at(-90), attempts=2, nextAttemptAt=at(-5)),
        filescan("cleared", created=-80, phase="Queued", queuedAt=at(-80), nextAttemptAt=None),
    )
    ready, due = r.waiting(NOW)
    assert names(ready) == ["due", "past", "cleared"]
    assert due == NOW + dt.timedelta(seconds=20)
    # Once the clock passes them, the backed-off ones take their place by age again.
    ready, due = r.waiting(NOW + dt.timedelta(seconds=61))
    assert names(ready) == ["later", "soon", "mid", "due", "past", "cleared"]
    assert due is None


@pytest.mark.parametrize(
    ("file_name", "size"),
    [("big.pdf", 1001), ("setup.exe", 10), ("SETUP.EXE", 10)],
)
def test_filescans_that_will_be_skipped_never_wait_for_a_slot(file_name: str, size: int) -> None:
    r = with_filescans(reconciler(), filescan("skip", created=-100, file_name=file_name, size=size),
                       filescan("scan", created=-10))
    assert names(r.waiting(NOW)[0]) == ["scan"]


def test_a_file_at_the_size_limit_waits() -> None:
    r = with_filescans(reconciler(), filescan("edge", created=-100, size=1000))
    assert names(r.waiting(NOW)[0]) == ["edge"]


def job(name: str, *conditions: tuple[str, str], owner: str = "fs", rv: int = 1) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "resourceVersion": str(rv), "labels": {"comm100.io/filescan": owner}},
        "status": {"conditions": [{"type": t, "status": s} for t, s in conditions]},
    }


def test_finished_jobs_never_hold_a_slot() -> None:
    r = reconciler()
    for item in (
        job("running"),
        job("suspended", ("Suspended", "True")),  # Kueue has not admitted it yet: still ours to count
        job("complete", ("SuccessCriteriaMet", "True"), ("Complete", "True")),
        job("failed", ("FailureTarget", "True"), ("Failed", "True")),
        job("not-yet-failed", ("Failed", "False")),
    ):
        r.jobs[item["metadata"]["name"]] = item
    assert r.unfinished_jobs() == 3


def test_jobs_created_but_not_yet_watched_hold_a_slot() -> None:
    r = reconciler()
    r.jobs["running"] = job("running")
    # What _admit records before it creates a Job, so that the next round does not over-admit.
    r._pending_jobs["created"] = time.monotonic()
    r._pending_jobs["running"] = time.monotonic()  # created and already seen: counted once
    assert r.unfinished_jobs() == 2


def test_a_pending_job_the_watch_never_shows_stops_counting() -> None:
    r = reconciler()
    r._pending_jobs["lost"] = time.monotonic() - 121
    r._pending_jobs["fresh"] = time.monotonic() - 60
    assert r.unfinished_jobs() == 1
    assert "lost" not in r._pending_jobs


def test_the_watch_takes_over_from_pending() -> None:
    r = reconciler()
    r._pending_jobs["fs-a1"] = time.monotonic()
    r.observe_job(job("fs-a1", rv=5))
    assert "fs-a1" not in r._pending_jobs
    assert r.unfinished_jobs() == 1
    r.observe_job(job("fs-a1", ("Complete", "True"), rv=6))
    assert r.unfinished_jobs() == 0
    r.observe_job(job("fs-a1", rv=4))  # an older event does not bring a finished Job back
    assert r.unfinished_jobs() == 0
    r.observe_job(job("fs-a1", ("Complete", "True"), rv=6), deleted=True)
    assert r.jobs == {} and r.unfinished_jobs() == 0
