"""Three ledgers reconciled at the end of every fault scenario.

Events sent (and acknowledged with 2xx), FileScans stored, and the calls Comm100 received. The
promise checked: every acknowledged event has a FileScan; every FileScan ends Done with the right
verdict and the right final call; no file is ever reported available unless its scan was clean;
no attempt ran twice.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

from devstack.flow import EICAR, Flow, livechat_event, ticket_event

CLEAN = b"an ordinary attachment, nothing to see\n"


@dataclass
class Upload:
    source: str
    guid: str
    clean: bool
    body: dict[str, Any]

    @property
    def expected(self) -> str:
        return "available" if self.clean else "unavailable"


@dataclass
class Ledger:
    flow: Flow
    uploads: dict[str, Upload] = field(default_factory=dict)
    acked: set[str] = field(default_factory=set)
    answers: list[tuple[str, int]] = field(default_factory=list)

    def new_uploads(self, count: int, *, infected_every: int = 3) -> list[Upload]:
        """Files served by the simulator, one in ``infected_every`` of them EICAR, both sources."""
        made = []
        for i in range(count):
            guid = str(uuid.uuid4())
            clean = i % infected_every != 0
            data = CLEAN if clean else EICAR
            source = "ticket" if i % 2 == 0 else "livechat"
            url = self.flow.sim.add_file(f"{guid}.bin", data)
            make = ticket_event if source == "ticket" else livechat_event
            upload = Upload(source, guid, clean, make(guid, url, f"file-{i}.bin", len(data)))
            self.uploads[guid] = upload
            made.append(upload)
        return made

    def post(self, upload: Upload) -> int:
        """Post as Comm100 does; a transport failure counts as no answer (Comm100 would repost)."""
        try:
            status = self.flow.post(upload.source, upload.body).status_code
        except httpx.HTTPError:
            status = 0
        self.answers.append((upload.guid, status))
        if 200 <= status < 300:
            self.acked.add(upload.guid)
        return status

    def repost_until_acknowledged(self, timeout: float = 120) -> None:
        """Comm100's repost mechanism, compressed: every refused event is sent again until stored."""
        deadline = time.monotonic() + timeout
        while True:
            missing = [u for g, u in self.uploads.items() if g not in self.acked]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(missing)} events never acknowledged within {timeout}s")
            for upload in missing:
                self.post(upload)
            time.sleep(0.5)

    def reconcile(self, timeout: float = 300) -> None:
        """Wait until every stored FileScan finished, print the ledgers and assert the promise."""
        scans = {f["spec"]["guid"]: f for f in self.flow.wait_all_finished(len(self.acked), timeout=timeout)}
        calls = self.flow.sim.calls()
        jobs = self.flow.jobs()
        final: dict[str, str] = {}
        wrongly_available = []
        for call in calls:
            if call.guid is None:
                continue
            said = _said(call.body)
            if said == "available" and not self.uploads[call.guid].clean:
                wrongly_available.append(call.guid)
            if 200 <= call.status < 300:
                final[call.guid] = said
        right = [g for g, u in self.uploads.items() if final.get(g) == u.expected]
        rows = [
            ("events sent", len(self.uploads)),
            ("acknowledged with 2xx", len(self.acked)),
            ("FileScans stored", len(scans)),
            ("final Comm100 call right", len(right)),
            ("lost (acknowledged, not right at Comm100)", len(self.acked - set(right))),
            ("non-2xx answers to Comm100's posts", sum(1 for _, s in self.answers if not 200 <= s < 300)),
        ]
        print("\n" + "\n".join(f"  {name:<44} {value:>5}" for name, value in rows))

        assert wrongly_available == [], f"reported available without a clean scan: {wrongly_available}"
        assert self.acked <= set(scans), f"acknowledged but not stored: {self.acked - set(scans)}"
        for guid, scan in scans.items():
            upload = self.uploads[guid]
            status = scan["status"]
            assert status["phase"] == "Done", (guid, status)
            assert status["verdict"] == ("clean" if upload.clean else "infected"), (guid, status)
            assert final.get(guid) == upload.expected, (guid, final.get(guid))
            name = scan["metadata"]["name"]
            owned = sorted(j["metadata"]["name"] for j in jobs
                           if j["metadata"]["labels"]["comm100.io/filescan"] == name)
            assert owned == sorted(f"{name}-a{n}" for n in range(1, status["attempts"] + 1)), (name, owned)
        assert set(self.uploads) == self.acked


def _said(body: Any) -> str | None:
    if not isinstance(body, dict):
        return None
    if "isAvailable" in body:
        return "available" if body["isAvailable"] else "unavailable"
    value = body.get("status")
    return {"passed": "available", "failed": "unavailable"}.get(value, value)
