"""Secrets never leave the places they belong: tokens and signed-URL signatures in no output.

One flow runs with the known webhook and Comm100 tokens (``devstack/flow.py``) and file URLs
whose query strings carry a signature (``?sig=…``). Events arrive with the token in the query
string, in ``Authorization`` and in ``X-Webhook-Token``; failures are provoked on purpose (a
wrong webhook token that *starts with* the real one, a refused URL, a 404 file, a redirect, and a
401 from Comm100 until its token is restored), because error paths are where secrets leak.

Then every output a person or a monitoring system reads is searched for the tokens and the
signatures: both programs' logs, every Kubernetes Event in the namespace, every FileScan's status,
the pod runner's log, the scan pods' container logs and both ``/metrics`` endpoints. A FileScan's
``spec`` and the scan Job's ``args`` hold the URL by design (the scanner needs it) and are not
outputs, so they are not searched.
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from devstack.clamd import ClamdProcess
from devstack.cluster import Devstack
from devstack.flow import COMM100_TOKEN, EICAR, WEBHOOK_TOKEN, Flow, Program, livechat_event, ticket_event
from tests.fixtures.filescans import create_namespace
from tests.fixtures.waiting import wait_for

pytestmark = pytest.mark.cluster

SIG = "sig" + secrets.token_hex(12)
REDIRECT_SIG = "rsig" + secrets.token_hex(12)
CLEAN = b"an ordinary attachment\n"


@dataclass
class Outputs:
    """Every place searched, by name, as text."""

    texts: dict[str, str]
    secrets: dict[str, str]

    def leaks(self, place: str) -> list[str]:
        text = self.texts[place]
        return [name for name, value in self.secrets.items() if value in text]


def _metrics_port(program: Program) -> int:
    return int(program.argv[program.argv.index("--metrics-port") + 1])


def _webhook_url(flow: Flow) -> str:
    return flow.webhook.health_url.rsplit("/", 1)[0]


def _post(flow: Flow, source: str, body: dict[str, Any], *, how: str, token: str) -> httpx.Response:
    url = f"{_webhook_url(flow)}/webhooks/{source}"
    headers = {"Content-Type": "application/json"}
    params = {}
    if how == "query":
        params["token"] = token
    elif how == "bearer":
        headers["Authorization"] = f"Bearer {token}"
    else:
        headers["X-Webhook-Token"] = token
    return httpx.post(url, content=json.dumps(body), headers=headers, params=params, timeout=30)


def _signed(url: str, sig: str = SIG) -> str:
    return f"{url}?sig={sig}&expires=1999999999"


def _drive(flow: Flow) -> int:
    """Post the events, provoke the failures; return how many FileScans must finish."""
    def upload(data: bytes | None, **serve: Any) -> tuple[str, str]:
        guid = str(uuid.uuid4())
        return guid, _signed(flow.sim.add_file(f"{guid}.bin", data, **serve))

    stored = 0
    for how, data in (("query", CLEAN), ("bearer", EICAR), ("header", CLEAN)):
        guid, url = upload(data)
        response = _post(flow, "ticket", ticket_event(guid, url, "a.pdf", len(data)), how=how, token=WEBHOOK_TOKEN)
        assert response.status_code == 200, (how, response.text)
        stored += 1

    # Refusals: a wrong token that starts with the real one (in each place), and a refused URL.
    for how in ("query", "bearer", "header"):
        guid, url = upload(CLEAN)
        response = _post(flow, "ticket", ticket_event(guid, url, "a.pdf", len(CLEAN)), how=how,
                         token=WEBHOOK_TOKEN + "-wrong")
        assert response.status_code == 401, (how, response.text)
    guid = str(uuid.uuid4())
    refused = ticket_event(guid, _signed("https://evil.example/x"), "a.pdf", 10)
    response = _post(flow, "ticket", refused, how="query", token=WEBHOOK_TOKEN)
    assert response.status_code == 422, response.text
    assert SIG not in response.text

    # Scan failures: a 404 and a redirect, both signed.
    guid, url = upload(None, status=404)
    assert _post(flow, "ticket", ticket_event(guid, url, "gone.pdf", 10), how="query",
                 token=WEBHOOK_TOKEN).status_code == 200
    stored += 1
    _, target = upload(CLEAN)
    guid = str(uuid.uuid4())
    hop = _signed(flow.sim.add_file(f"{guid}.bin", redirect_to=_signed(target, REDIRECT_SIG)))
    assert _post(flow, "livechat", livechat_event(guid, hop, "hop.pdf", len(CLEAN)), how="bearer",
                 token=WEBHOOK_TOKEN).status_code == 200
    stored += 1

    # Comm100 answers 401 (its token rotated away under us) until the right token is restored.
    flow.sim.set_tokens("rotated-" + secrets.token_hex(8))
    guid, url = upload(CLEAN)
    assert _post(flow, "ticket", ticket_event(guid, url, "late.pdf", len(CLEAN)), how="header",
                 token=WEBHOOK_TOKEN).status_code == 200
    stored += 1
    wait_for(lambda: [c for c in flow.sim.calls(guid=guid) if c.status == 401], timeout=120,
             what="a 401 from Comm100 for the PUT", interval=0.5)
    flow.sim.set_tokens(COMM100_TOKEN)
    return stored


@pytest.fixture(scope="module")
def outputs(cluster: Devstack, clamd: ClamdProcess, filescan_crd: str,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outputs]:
    namespace = create_namespace(cluster, "hostile-secrets")
    workdir = tmp_path_factory.mktemp("secrets-flow")
    try:
        with Flow.running(cluster, workdir, namespace=namespace, clamd=clamd, webhook=True) as flow:
            stored = _drive(flow)
            scans = flow.wait_all_finished(stored, timeout=240)
            assert len(scans) == stored
            assert {s["status"]["verdict"] for s in scans} == {"clean", "infected", "error"}
            assert any(c.status == 401 for c in flow.sim.calls()), "no 401 from Comm100 was provoked"
            late = [c for c in flow.sim.calls() if c.status == 401]
            assert any(200 <= c.status < 300 for c in flow.sim.calls(guid=late[0].guid)), "never reported"
            metrics = {
                "webhook /metrics": httpx.get(f"{_webhook_url(flow)}/metrics", timeout=10).text,
                "operator /metrics": httpx.get(
                    f"http://127.0.0.1:{_metrics_port(flow.operator)}/metrics", timeout=10).text,
            }
            events = cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout
            texts = {
                "operator log": flow.operator.logs(),
                "webhook log": flow.webhook.logs(),
                "kubernetes events": events,
                "filescan statuses": json.dumps([s["status"] for s in scans], ensure_ascii=False),
                **metrics,
            }
        pod_logs = sorted((cluster.dir / "pods").glob(f"{namespace}_*/*.log"))
        texts["scan pod logs"] = "\n".join(path.read_text(errors="replace") for path in pod_logs)
        texts["pod runner log"] = (cluster.dir / "logs" / "pod-runner.log").read_text(errors="replace")
        yield Outputs(texts, {"webhook token": WEBHOOK_TOKEN, "Comm100 token": COMM100_TOKEN,
                              "sig": SIG, "redirect sig": REDIRECT_SIG})
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


PLACES = [
    "operator log",
    "webhook log",
    "kubernetes events",
    "filescan statuses",
    "webhook /metrics",
    "operator /metrics",
    "scan pod logs",
    "pod runner log",
]


@pytest.mark.parametrize("place", PLACES)
def test_no_secret_in(place: str, outputs: Outputs) -> None:
    assert outputs.texts[place].strip(), f"nothing was read from {place}: the search would prove nothing"
    assert outputs.leaks(place) == [], f"{place} contains {outputs.leaks(place)}"


def test_the_search_finds_a_planted_secret(outputs: Outputs) -> None:
    """The search can fail: the same texts with a signed URL appended do contain the signature."""
    planted = Outputs({"planted": outputs.texts["operator log"] + _signed("http://x/y")}, outputs.secrets)
    assert planted.leaks("planted") == ["sig"]


def test_the_scan_pods_logged_what_they_fetched(outputs: Outputs) -> None:
    """The pod logs were the scanner's (they name the file server), so their search meant something."""
    assert "scanning http://127.0.0.1:" in outputs.texts["scan pod logs"]
    assert "?…" in outputs.texts["scan pod logs"]  # the redacted query string
