"""Hostile files and file names through the whole flow: webhook, operator, scan Job, Comm100.

Every upload must end with a clear verdict or error at Comm100, and the ledger's rule holds: no
file is ever reported available unless its scan was clean. Clean uploads ride along as positive
controls, so a flow that refused everything would fail here too.

File names. ``fileName`` is display metadata: the FileScan is named ``<source>-<guid>``, the scan
Job gets only the URL and the size, and the scanner never writes a file under the upload's name.
So a name with path separators, ``..``, control characters or any unicode is accepted (it is
length-checked like every field) and stored as sent: refusing it would leave a real upload
unscanned and unreported, while accepting it costs nothing but a strange printer column.
"""

from __future__ import annotations

import io
import tarfile
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from devstack.clamd import ClamdProcess
from devstack.flow import Flow, ticket_event
from tests.faults.ledger import _said
from tests.fixtures.clamd import archive_bomb, eicar
from tests.fixtures.cluster import Devstack

pytestmark = pytest.mark.cluster

MiB = 1024 * 1024
MAX_FILE_SIZE = 1 * MiB
CLEAN = b"an ordinary attachment\n"


def zipped(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def nested(payload: bytes) -> bytes:
    """``payload`` inside a zip, inside a zip, inside a tar.gz."""
    inner = zipped({"docs/readme.txt": b"hello\n", "docs/payload.bin": payload})
    middle = zipped({"inner.zip": inner})
    return tar_gz({"bundle/middle.zip": middle, "bundle/notes.txt": b"notes\n"})


@pytest.fixture
def flow(cluster: Devstack, namespace: str, limited_clamd: ClamdProcess, tmp_path: Any) -> Iterator[Flow]:
    """The whole flow with the webhook, a 1 MiB file limit and the limited clamd."""
    settings = {"FILESCAN_MAX_FILE_SIZE": str(MAX_FILE_SIZE), "FILESCAN_MAX_ATTEMPTS": "2"}
    with Flow.running(
        cluster, tmp_path / "flow", namespace=namespace, settings=settings, clamd=limited_clamd, webhook=True
    ) as running:
        yield running


@dataclass
class Upload:
    what: str
    guid: str
    verdict: str
    """The verdict the FileScan must end with."""
    reported: str
    """``available`` or ``unavailable``: what Comm100 must finally hear."""
    name: str = "file.bin"


def post(flow: Flow, upload: Upload, data: bytes | None, *, declared_size: int | None = None, **serve: Any) -> None:
    url = flow.sim.add_file(f"{upload.guid}.bin", data, **serve)
    size = len(data or b"") if declared_size is None else declared_size
    body = ticket_event(upload.guid, url, upload.name, size)
    body["fileName"] = upload.name
    body["fileExtension"] = "bin"  # the name is the hostile part; its "extension" could be anything
    response = flow.post("ticket", body)
    assert response.status_code == 200, (upload.what, response.text)
    assert response.json()["result"] == "delay"


def settle(flow: Flow, uploads: list[Upload], timeout: float = 240) -> dict[str, dict[str, Any]]:
    """Wait for every FileScan to finish, then check each verdict and the ledger's rule at Comm100."""
    scans = {f["spec"]["guid"]: f for f in flow.wait_all_finished(len(uploads), timeout=timeout)}
    assert set(scans) == {u.guid for u in uploads}
    calls = flow.sim.calls()
    expected = {u.guid: u for u in uploads}
    wrongly_available = [c.guid for c in calls if _said(c.body) == "available"
                         and scans[c.guid]["status"].get("verdict") != "clean"]
    assert wrongly_available == [], f"reported available without a clean scan: {wrongly_available}"
    for upload in uploads:
        scan = scans[upload.guid]
        status = scan["status"]
        assert scan["metadata"]["name"] == f"ticket-{upload.guid}", upload.what
        assert (status["phase"], status["verdict"]) == ("Done", upload.verdict), (upload.what, status)
        final = [_said(c.body) for c in calls if c.guid == upload.guid and 200 <= c.status < 300]
        assert final and final[-1] == upload.reported, (upload.what, final)
        ready = {c["type"]: c for c in status["conditions"]}["Ready"]
        assert ready["message"], (upload.what, ready)
    assert {guid: expected[guid].reported for guid in scans} == {
        u.guid: u.reported for u in uploads
    }
    return scans


def new(what: str, verdict: str, reported: str, **kwargs: Any) -> Upload:
    return Upload(what, str(uuid.uuid4()), verdict, reported, **kwargs)


def test_hostile_files_end_with_a_clear_verdict(flow: Flow) -> None:
    clean_nested = new("a clean nested archive (control)", "clean", "available", name="bundle.tar.gz")
    eicar_nested = new("EICAR in a zip in a zip in a tar.gz", "infected", "unavailable", name="bundle.tar.gz")
    bomb = new("an archive bomb", "infected", "unavailable", name="bomb.zip")
    empty = new("a 0-byte file", "clean", "available", name="empty.txt")
    lying_chunked = new("over the limit, streamed, the event's size lying", "error", "unavailable")
    lying_length = new("over the limit, Content-Length true, the event's size lying", "error", "unavailable")
    short_length = new("Content-Length claiming more than is sent", "error", "unavailable")
    big = bytes(MAX_FILE_SIZE + 4096)

    post(flow, clean_nested, nested(CLEAN))
    post(flow, eicar_nested, nested(eicar()))
    post(flow, bomb, archive_bomb())
    post(flow, empty, b"")
    # The event says 1 KiB, the body is over FILESCAN_MAX_FILE_SIZE: the operator cannot skip it by
    # size, so the scanner's own metering must stop it (no Content-Length, or an honest one).
    post(flow, lying_chunked, big, declared_size=1024, chunked=True)
    post(flow, lying_length, big, declared_size=1024)
    # Content-Length (and the event) claim 2 KiB but only 1 KiB arrives before the close.
    post(flow, short_length, CLEAN * 45, declared_size=2048, content_length=2048)

    scans = settle(flow, [clean_nested, eicar_nested, bomb, empty, lying_chunked, lying_length, short_length])

    assert scans[eicar_nested.guid]["status"]["signature"].startswith("Eicar-Test-Signature")
    assert scans[bomb.guid]["status"]["signature"].startswith("Heuristics.Limits.Exceeded")
    assert scans[empty.guid]["status"]["bytes"] == 0
    for lying in (lying_chunked, lying_length):
        conditions = scans[lying.guid]["status"]["conditions"]
        assert any("limit" in c["message"] for c in conditions), conditions
        fetched = sum(f.bytes_sent for f in flow.sim.fetches(f"{lying.guid}.bin"))
        assert fetched <= 2 * (MAX_FILE_SIZE + 4096)


def test_true_size_over_the_limit_is_skipped_whatever_content_length_says(flow: Flow) -> None:
    """The event's size is honest and over the limit; Content-Length claims a small file."""
    skipped = new("over the limit by the event, Content-Length lying small", "skipped", "unavailable")
    post(flow, skipped, bytes(MAX_FILE_SIZE + 1), content_length=100)
    clean = new("a clean file (control)", "clean", "available")
    post(flow, clean, CLEAN)

    scans = settle(flow, [skipped, clean])

    assert flow.sim.fetches(f"{skipped.guid}.bin") == []  # not even fetched
    assert scans[skipped.guid]["status"].get("jobName") in (None, "")


HOSTILE_NAMES = [
    "../../../../etc/passwd",
    "..\\..\\windows\\system32\\config\\sam",
    "/var/run/secrets/kubernetes.io/serviceaccount/token",
    "a/b/c.txt",
    "..",
    ".",
    "name\x00.txt",
    "line\nbreak\r.txt",
    "\x1b[31mred\x1b[0m\x07.txt",
    "tab\there.txt",
    "r\u00e9sum\u00e9 \u2013 \u5c65\u6b74\u66f8 \U0001f4ce.pdf",
    "\u202etxt.exe",
    "\ufeffbom.txt",
    "CON",
    " ",
    "%2e%2e%2fetc%2fpasswd",
    "$(reboot)`id`; rm -rf ~.txt",
    "x" * 1024,
]


def test_hostile_file_names_are_accepted_stored_as_sent_and_never_name_anything(
    flow: Flow, cluster: Devstack
) -> None:
    uploads = []
    for index, name in enumerate(HOSTILE_NAMES):
        infected = index % 3 == 0
        upload = new(f"file name {name!r}", "infected" if infected else "clean",
                     "unavailable" if infected else "available", name=name)
        post(flow, upload, eicar() if infected else CLEAN)
        uploads.append(upload)

    scans = settle(flow, uploads)

    for upload in uploads:
        scan = scans[upload.guid]
        assert scan["spec"]["fileName"] == upload.name, upload.what
        assert scan["metadata"]["name"] == f"ticket-{upload.guid}"
    jobs = {job["metadata"]["name"]: job for job in flow.jobs()}
    assert set(jobs) == {f"ticket-{u.guid}-a1" for u in uploads}
    for job in jobs.values():
        container = job["spec"]["template"]["spec"]["containers"][0]
        assert "--url" not in container["args"]  # the URL travels in the environment
        args_and_env = repr(container["args"]) + repr(container.get("env"))
        assert not any(u.name in args_and_env for u in uploads if len(u.name) > 3)


@pytest.mark.parametrize("name", ["", "x" * 1025], ids=["empty", "over-1024"])
def test_file_names_outside_the_length_limits_are_refused_with_422(flow: Flow, name: str) -> None:
    guid = str(uuid.uuid4())
    body = ticket_event(guid, flow.sim.add_file(f"{guid}.bin", CLEAN), "x.txt", len(CLEAN))
    body["fileName"] = name

    response = flow.post("ticket", body)

    assert response.status_code == 422
    assert [error["field"] for error in response.json()["errors"]] == ["fileName"]
    assert flow.filescans() == []
