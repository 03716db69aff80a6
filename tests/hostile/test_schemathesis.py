"""Schema fuzzing: the real webhook process, driven from the ``/openapi.json`` it serves.

Schemathesis generates requests for every operation the webhook publishes, bodies that fit the
event schema (positive) and bodies that break it (negative), with a valid token and without one.
Two promises are checked on every answer:

* no 5xx except a documented 503 (a 500 is a crash or an unhandled case), and every status is
  one the schema documents for that operation;
* nothing is stored from a request that was not answered 2xx: the FileScans that appear are
  exactly those named by the 2xx answers' guids.

The Python API rather than the CLI: the webhook runs on a port chosen at fixture time, the
FileScan bookkeeping needs every request and its answer, and hypothesis shrinks a failing case
to a minimal one printed by pytest. A fuzzed ``fileURL`` is never on the allowlist, so a coin
flip replaces it with an allowed one: otherwise almost nothing would get past the URL check and
the store path (the apiserver's own validation of fuzzed strings) would go untested.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.fixtures.filescans import (
    ALLOWED_FILE_HOSTS,
    FILE_HOST,
    WebhookProcess,
    filescan_names,
    run_webhook,
)

pytestmark = pytest.mark.cluster

MAX_EXAMPLES = 50
"""Per operation and run: 4 runs x (5 + 2) operations stay well under two minutes."""

EXAMPLE_HOST = "files.comm100.example"
"""The host of the OpenAPI document's own examples, allowed so the examples are stored."""

FUZZ_SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
)


@dataclass
class Exchange:
    operation: str
    status: int
    stored_as: str | None = None
    """For a 2xx webhook answer: the FileScan name its guid maps to."""


@dataclass
class Record:
    exchanges: list[Exchange] = field(default_factory=list)

    def stored(self) -> set[str]:
        return {e.stored_as for e in self.exchanges if e.stored_as is not None}


@pytest.fixture(scope="module")
def fuzzed_webhook(
    cluster: Any, filescan_crd: str, module_namespace: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WebhookProcess]:
    env = {"FILESCAN_ALLOWED_FILE_HOSTS": f"{ALLOWED_FILE_HOSTS},{EXAMPLE_HOST}"}
    with run_webhook(cluster, module_namespace, tmp_path_factory.mktemp("fuzzed-webhook"), env=env) as running:
        yield running


@pytest.fixture(scope="module")
def schema(fuzzed_webhook: WebhookProcess) -> Any:
    return schemathesis.openapi.from_url(f"{fuzzed_webhook.url}/openapi.json", timeout=10)


@pytest.fixture(scope="module")
def documented(fuzzed_webhook: WebhookProcess) -> dict[tuple[str, str], set[int]]:
    """(METHOD, path) -> the statuses its OpenAPI entry documents."""
    document = httpx.get(f"{fuzzed_webhook.url}/openapi.json", timeout=10).json()
    return {
        (method.upper(), path): {int(code) for code in entry["responses"]}
        for path, item in document["paths"].items()
        for method, entry in item.items()
    }


def _with_allowed_url(body: Any) -> Any:
    """The body with its ``fileURL`` (flat or under ``payload``) pointed at an allowed host."""
    if not isinstance(body, dict):
        return body
    target = body["payload"] if isinstance(body.get("payload"), dict) else body
    if "fileURL" in target:
        target["fileURL"] = f"https://{FILE_HOST}/fuzz/{uuid.uuid4()}?sig=fuzz"
    return body


def _fuzz_operation(
    operation: Any,
    schema: Any,
    mode: schemathesis.GenerationMode,
    webhook: WebhookProcess,
    headers: dict[str, str],
    allowed: set[int],
    record: Record,
) -> None:
    strategies = [operation.as_strategy(generation_mode=mode)]
    if mode == schemathesis.GenerationMode.POSITIVE:
        strategies += schema.get_strategies_from_examples(operation)
    label = f"{operation.method.upper()} {operation.path}"
    is_webhook = operation.path.startswith("/webhooks/")
    source = operation.path.rsplit("/", 1)[-1]

    @FUZZ_SETTINGS
    @given(case=st.one_of(strategies), point_at_allowed_host=st.booleans())
    def run(case: Any, point_at_allowed_host: bool) -> None:
        if is_webhook and point_at_allowed_host:
            case.body = _with_allowed_url(case.body)
        response = case.call(base_url=webhook.url, headers=headers, timeout=30)
        status = response.status_code
        exchange = Exchange(label, status)
        record.exchanges.append(exchange)
        if is_webhook and 200 <= status < 300:
            answer = json.loads(response.content)
            exchange.stored_as = f"{source}-{answer['guid'].lower()}"
            assert answer["result"] == "delay", answer  # never "passed" before a scan
        assert status < 500 or status == 503, f"{label} answered {status}: {response.content[:500]!r}"
        assert status in allowed, f"{label} answered an undocumented {status}: {response.content[:500]!r}"
        if is_webhook and not headers:
            # No token: refused before the body is even parsed (only the size and type gate first).
            assert status in (401, 413, 415), f"{label} answered {status} without a token"

    run()


@pytest.mark.parametrize("mode", [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE])
@pytest.mark.parametrize("authenticated", [True, False], ids=["with-token", "without-token"])
def test_no_undocumented_errors_and_nothing_stored_from_a_refusal(
    cluster: Any,
    fuzzed_webhook: WebhookProcess,
    schema: Any,
    documented: dict[tuple[str, str], set[int]],
    mode: schemathesis.GenerationMode,
    authenticated: bool,
) -> None:
    headers = {"Authorization": f"Bearer {fuzzed_webhook.tokens[0]}"} if authenticated else {}
    before = filescan_names(cluster, fuzzed_webhook.namespace)
    record = Record()

    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/webhooks/ticket", "/webhooks/livechat"}
    for operation in operations:
        if mode == schemathesis.GenerationMode.NEGATIVE and not operation.path.startswith("/webhooks/"):
            continue  # the probes take no input to break
        allowed = documented[(operation.method.upper(), operation.path)]
        _fuzz_operation(operation, schema, mode, fuzzed_webhook, headers, allowed, record)

    after = filescan_names(cluster, fuzzed_webhook.namespace)
    stored = record.stored()
    assert after - before <= stored, f"stored without a 2xx answer: {sorted(after - before - stored)}"
    assert stored <= after, f"answered 2xx but not stored: {sorted(stored - after)}"
    webhook_answers = [e.status for e in record.exchanges if e.operation.startswith("POST /webhooks/")]
    assert webhook_answers, "no request reached the webhook endpoints"
    if authenticated and mode == schemathesis.GenerationMode.POSITIVE:
        # The store path was exercised, not only the refusals.
        assert stored, f"no event was stored; answers: {sorted(set(webhook_answers))}"
    if not authenticated:
        assert stored == set()
