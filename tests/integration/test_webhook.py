"""``filescan webhook`` against the real apiserver: what is stored, what is refused, what is logged.

Every refusal is checked against the apiserver (the FileScan the event would have become does not
exist), not only against the status code.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller.events import filescan_name
from tests.fixtures.filescans import (
    FILESCAN_PROGRAM,
    WEBHOOK_TOKENS,
    WebhookProcess,
    create_namespace,
    event_body,
    filescan_names,
    free_port,
    get_filescan,
    new_guid,
    run_webhook,
)
from tests.fixtures.waiting import wait_for

pytestmark = pytest.mark.cluster

SOURCES = ("ticket", "livechat")


def _fields(body: dict[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = body.get("payload", body)
    return fields


def assert_not_stored(cluster: Any, webhook: WebhookProcess, source: str, guid: str) -> None:
    assert get_filescan(cluster, webhook.namespace, filescan_name(source, guid)) is None  # type: ignore[arg-type]


# -- storing ------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("nested", [False, True], ids=["flat", "payload"])
def test_event_is_stored_and_answered_delay(cluster: Any, webhook: WebhookProcess, source: str, nested: bool) -> None:
    guid = new_guid().upper()
    body = event_body(source, nested=nested, guid=guid)
    answer = webhook.post(source, body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["guid"] == guid
    assert answer.json()["result"] == "delay"
    assert answer.json()["message"]

    stored = get_filescan(cluster, webhook.namespace, f"{source}-{guid.lower()}")
    assert stored is not None
    spec, fields = stored["spec"], _fields(body)
    assert spec["source"] == source
    assert spec["eventId"] == body["eventId"]
    assert spec["guid"] == guid
    owner = "ticketId" if source == "ticket" else "chatId"
    assert spec[owner] == fields[owner]
    for key in ("fileName", "fileExtension", "fileSize", "fileURL", "fileLocalPath"):
        assert spec[key] == fields[key], key
    assert (spec.get("eventTime") == "2025-03-01T12:00:00Z") is nested
    assert stored["metadata"]["labels"]["comm100.io/source"] == source


def test_unknown_fields_are_ignored(cluster: Any, webhook: WebhookProcess) -> None:
    body = event_body("livechat", nested=True, siteId=1, payload={"visitorName": "Ann"})
    answer = webhook.post("livechat", body)
    assert answer.status_code == 200, answer.text
    stored = get_filescan(cluster, webhook.namespace, filescan_name("livechat", body["payload"]["guid"]))
    assert stored is not None and "visitorName" not in stored["spec"]


def test_over_size_file_is_still_stored(cluster: Any, webhook: WebhookProcess) -> None:
    # The operator answers Comm100 with the over-size policy, so the webhook must keep the event.
    body = event_body("ticket", fileSize=50 * 1024**3)
    assert webhook.post("ticket", body).status_code == 200
    stored = get_filescan(cluster, webhook.namespace, filescan_name("ticket", body["guid"]))
    assert stored is not None and stored["spec"]["fileSize"] == 50 * 1024**3


def test_repost_creates_nothing_new(cluster: Any, webhook: WebhookProcess) -> None:
    guid = new_guid()
    first_body = event_body("ticket", guid=guid)
    first = webhook.post("ticket", first_body)
    assert first.status_code == 200
    name = filescan_name("ticket", guid)
    stored = get_filescan(cluster, webhook.namespace, name)
    assert stored is not None
    names_before = filescan_names(cluster, webhook.namespace)

    # The same post again, the same file under a new eventId, and the guid in upper case.
    reposts = [first_body, {**first_body, "eventId": "evt-repost"}, {**first_body, "guid": guid.upper()}]
    for body in reposts:
        again = webhook.post("ticket", body)
        assert again.status_code == 200, again.text
        assert again.json()["result"] == "delay"
        assert again.json()["guid"] == body["guid"]

    after = get_filescan(cluster, webhook.namespace, name)
    assert after is not None
    assert after["metadata"]["uid"] == stored["metadata"]["uid"]
    assert after["metadata"]["resourceVersion"] == stored["metadata"]["resourceVersion"]
    assert after["spec"] == stored["spec"]
    assert filescan_names(cluster, webhook.namespace) == names_before


def test_same_guid_from_the_other_source_is_another_file(cluster: Any, webhook: WebhookProcess) -> None:
    guid = new_guid()
    assert webhook.post("ticket", event_body("ticket", guid=guid)).status_code == 200
    assert webhook.post("livechat", event_body("livechat", guid=guid)).status_code == 200
    names = filescan_names(cluster, webhook.namespace)
    assert {filescan_name("ticket", guid), filescan_name("livechat", guid)} <= names


# -- authentication -----------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["bearer", "header", "query"])
@pytest.mark.parametrize("token", WEBHOOK_TOKENS, ids=["current", "next"])
def test_token_accepted_from_each_place(cluster: Any, webhook: WebhookProcess, how: str, token: str) -> None:
    body = event_body("ticket")
    answer = webhook.post("ticket", body, token=token, how=how)
    assert answer.status_code == 200, answer.text
    assert get_filescan(cluster, webhook.namespace, filescan_name("ticket", body["guid"])) is not None


@pytest.mark.parametrize(
    ("token", "how"),
    [
        (None, "bearer"),
        ("tok-wrong-0000000000000000", "bearer"),
        ("tok-wrong-0000000000000000", "query"),
        (WEBHOOK_TOKENS[0][:-1], "header"),
        (WEBHOOK_TOKENS[0] + "x", "bearer"),
        ("", "query"),
    ],
    ids=["none", "wrong-bearer", "wrong-query", "prefix", "longer", "empty"],
)
@pytest.mark.parametrize("source", SOURCES)
def test_no_valid_token_is_401_and_stores_nothing(
    cluster: Any, webhook: WebhookProcess, source: str, token: str | None, how: str
) -> None:
    body = event_body(source)
    answer = webhook.post(source, body, token=token, how=how)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == "Bearer"
    assert_not_stored(cluster, webhook, source, body["guid"])


def test_token_in_another_scheme_is_not_accepted(cluster: Any, webhook: WebhookProcess) -> None:
    body = event_body("ticket")
    answer = webhook.post("ticket", body, token=None, headers={"Authorization": f"Basic {WEBHOOK_TOKENS[0]}"})
    assert answer.status_code == 401
    assert_not_stored(cluster, webhook, "ticket", body["guid"])


def test_auth_is_checked_before_validation(cluster: Any, webhook: WebhookProcess) -> None:
    answer = webhook.post("ticket", {"event": "nonsense"}, token=None)
    assert answer.status_code == 401, "an unauthenticated caller learns nothing about validation"


# -- validation and fetch policy ------------------------------------------------------------------

INVALID = {
    "missing guid": ("ticket", lambda b: {k: v for k, v in b.items() if k != "guid"}, "guid"),
    "size not a number": ("ticket", lambda b: {**b, "fileSize": "huge"}, "fileSize"),
    "negative size": ("livechat", lambda b: {**b, "fileSize": -5}, "fileSize"),
    "chat id on ticket": (
        "ticket",
        lambda b: {**{k: v for k, v in b.items() if k != "ticketId"}, "chatId": 1},
        "ticketId",
    ),
    "bad guid": ("livechat", lambda b: {**b, "guid": "12345"}, "guid"),
    "wrong event": ("ticket", lambda b: {**b, "event": "chatEnded"}, "event"),
}


@pytest.mark.parametrize(("source", "change", "field"), INVALID.values(), ids=INVALID.keys())
def test_invalid_event_is_422_naming_the_field(
    cluster: Any, webhook: WebhookProcess, source: str, change: Any, field: str
) -> None:
    body = event_body(source)
    guid = body["guid"]
    answer = webhook.post(source, change(body))
    assert answer.status_code == 422, answer.text
    assert field in answer.json()["detail"]
    assert field in [error["field"] for error in answer.json()["errors"]]
    assert_not_stored(cluster, webhook, source, guid)


def test_nested_error_names_the_payload_field(cluster: Any, webhook: WebhookProcess) -> None:
    body = event_body("livechat", nested=True)
    del body["payload"]["chatId"]
    answer = webhook.post("livechat", body)
    assert answer.status_code == 422
    assert "payload.chatId" in answer.json()["detail"]
    assert_not_stored(cluster, webhook, "livechat", body["payload"]["guid"])


@pytest.mark.parametrize(
    "raw", [b"{not json", b"[1, 2]", b'"fileUploaded"', b""], ids=["broken", "list", "str", "empty"]
)
def test_body_that_is_not_an_object_is_422(cluster: Any, webhook: WebhookProcess, raw: bytes) -> None:
    names_before = filescan_names(cluster, webhook.namespace)
    answer = webhook.post("ticket", raw)
    assert answer.status_code == 422
    assert "body" in answer.json()["detail"]
    assert filescan_names(cluster, webhook.namespace) == names_before


REFUSED_URLS = {
    "plain http": "http://files.comm100.test/a",
    "other host": "https://evil.example/a",
    "lookalike suffix": "https://files.comm100.test.evil.example/a",
    "userinfo": "https://files.comm100.test@evil.example/a",
    "bare suffix": "https://cdn.comm100.test/a",
    "ip": "https://169.254.169.254/latest/meta-data",
    "file scheme": "file:///etc/passwd",
}


@pytest.mark.parametrize("url", REFUSED_URLS.values(), ids=REFUSED_URLS.keys())
def test_file_url_outside_policy_is_422(cluster: Any, webhook: WebhookProcess, url: str) -> None:
    body = event_body("livechat", fileURL=url)
    answer = webhook.post("livechat", body)
    assert answer.status_code == 422, answer.text
    assert "fileURL" in answer.json()["detail"]
    assert_not_stored(cluster, webhook, "livechat", body["guid"])


def test_file_url_on_a_suffix_entry_is_accepted(cluster: Any, webhook: WebhookProcess) -> None:
    body = event_body("livechat", fileURL="https://eu-1.cdn.comm100.test/a.png")
    assert webhook.post("livechat", body).status_code == 200


# -- size and content type ------------------------------------------------------------------------


def _padded(body: dict[str, Any], size: int) -> bytes:
    raw = json.dumps(body).encode()
    return raw[:-1] + b" " * (size - len(raw)) + b"}"


def test_body_of_exactly_64_kib_is_accepted(cluster: Any, webhook: WebhookProcess) -> None:
    body = event_body("ticket")
    raw = _padded(body, 64 * 1024)
    assert len(raw) == 65536
    assert webhook.post("ticket", raw).status_code == 200


def test_body_over_64_kib_is_413_and_stores_nothing(cluster: Any, webhook: WebhookProcess) -> None:
    body = event_body("ticket")
    answer = webhook.post("ticket", _padded(body, 64 * 1024 + 1))
    assert answer.status_code == 413
    assert_not_stored(cluster, webhook, "ticket", body["guid"])


def test_chunked_body_over_64_kib_is_413(cluster: Any, webhook: WebhookProcess) -> None:
    """Without a Content-Length the limit is enforced while reading, not trusted from a header."""
    body = event_body("ticket")
    raw = _padded(body, 200 * 1024)

    def chunks() -> Any:
        for start in range(0, len(raw), 8192):
            yield raw[start : start + 8192]

    answer = webhook.client.post(
        "/webhooks/ticket",
        content=chunks(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {WEBHOOK_TOKENS[0]}"},
    )
    assert answer.status_code == 413
    assert_not_stored(cluster, webhook, "ticket", body["guid"])


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None]
)
def test_non_json_content_type_is_415_and_stores_nothing(
    cluster: Any, webhook: WebhookProcess, content_type: str | None
) -> None:
    body = event_body("livechat")
    headers = {"Authorization": f"Bearer {WEBHOOK_TOKENS[0]}"}
    if content_type:
        headers["Content-Type"] = content_type
    answer = webhook.client.post("/webhooks/livechat", content=json.dumps(body).encode(), headers=headers)
    assert answer.status_code == 415
    assert_not_stored(cluster, webhook, "livechat", body["guid"])


def test_json_with_charset_is_accepted(webhook: WebhookProcess) -> None:
    answer = webhook.post("ticket", event_body("ticket"), headers={"Content-Type": "application/json; charset=utf-8"})
    assert answer.status_code == 200


# -- probes, metrics, documentation ---------------------------------------------------------------


def test_health_and_readiness(webhook: WebhookProcess) -> None:
    assert webhook.client.get("/healthz").json() == {"status": "ok"}
    ready = webhook.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_metrics_count_requests_by_source_and_outcome(webhook: WebhookProcess) -> None:
    webhook.post("livechat", event_body("livechat"))
    webhook.post("livechat", event_body("livechat"), token=None)
    text = webhook.client.get("/metrics").text
    assert 'filescan_webhook_requests_total{outcome="created",source="livechat"}' in text
    assert 'filescan_webhook_requests_total{outcome="unauthorized",source="livechat"}' in text
    assert 'filescan_webhook_request_duration_seconds_bucket{le="0.05",source="livechat"}' in text
    assert "# TYPE filescan_webhook_store_errors_total counter" in text


def test_openapi_documents_both_endpoints_with_examples_of_both_shapes(webhook: WebhookProcess) -> None:
    document = webhook.client.get("/openapi.json").json()
    for source in SOURCES:
        operation = document["paths"][f"/webhooks/{source}"]["post"]
        content = operation["requestBody"]["content"]["application/json"]
        assert set(content["examples"]) == {"flat", "payload"}
        assert "payload" in content["examples"]["payload"]["value"]
        assert len(content["schema"]["anyOf"]) == 2
        assert {"200", "401", "413", "415", "422", "503"} <= set(operation["responses"])
        assert any(parameter["name"] == "token" for parameter in operation["parameters"])


# -- logs ----------------------------------------------------------------------------------------


def test_logs_are_json_one_line_per_request_without_secrets(cluster: Any, webhook: WebhookProcess) -> None:
    guid = new_guid()
    body = event_body("ticket", guid=guid)
    assert webhook.post("ticket", body, how="query").status_code == 200
    assert webhook.post("ticket", body, token=WEBHOOK_TOKENS[1], how="header").status_code == 200
    webhook.post("ticket", event_body("ticket"), token="tok-wrong-but-secret-123", how="query")

    def our_lines() -> list[dict[str, Any]] | None:
        lines = [json.loads(line) for line in webhook.logs().splitlines() if line.strip()]
        ours = [line for line in lines if line.get("guid") == guid]
        return ours if len(ours) == 2 else None

    lines = wait_for(our_lines, timeout=10, what="two log lines for the guid")
    assert [line["outcome"] for line in lines] == ["created", "duplicate"]
    for line in lines:
        assert line["source"] == "ticket" and line["status"] == 200
        assert isinstance(line["latency_ms"], float)

    text = webhook.logs()
    for raw in text.splitlines():
        json.loads(raw)  # every line, uvicorn's included, is JSON
    for secret in (*WEBHOOK_TOKENS, "tok-wrong-but-secret-123", "s3cr3t-signature", "?token=", "?sig="):
        assert secret not in text, f"{secret!r} leaked into the logs"


# -- start-up ------------------------------------------------------------------------------------


@pytest.mark.parametrize("tokens", [None, "", "changeme", "short"], ids=["unset", "empty", "placeholder", "short"])
def test_refuses_to_start_without_a_usable_token(tmp_path: Path, tokens: str | None) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("FILESCAN_")}
    env["KUBECONFIG"] = str(tmp_path / "absent-kubeconfig")
    if tokens is not None:
        env["FILESCAN_WEBHOOK_TOKENS"] = tokens
    port = free_port()
    finished = subprocess.run(
        [str(FILESCAN_PROGRAM), "webhook", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert finished.returncode == 2, finished.stderr
    assert "token" in finished.stderr.lower()
    if tokens:
        assert tokens not in finished.stderr.replace("FILESCAN_WEBHOOK_TOKENS", ""), "the value is never echoed"


def test_insecure_no_auth_accepts_events_without_token(
    cluster: Any, filescan_crd: str, namespace: str, tmp_path: Path
) -> None:
    with run_webhook(cluster, namespace, tmp_path, args=("--insecure-no-auth",), tokens=()) as webhook:
        body = event_body("livechat")
        assert webhook.post("livechat", body, token=None).status_code == 200
        assert get_filescan(cluster, namespace, filescan_name("livechat", body["guid"])) is not None
        assert "WITHOUT authentication" in webhook.logs()


def test_tokens_from_a_file_rotate_without_a_restart(
    cluster: Any, filescan_crd: str, namespace: str, tmp_path: Path
) -> None:
    old, new = "file-token-old-5d1c9a7e3b", "file-token-new-8e2f4b6a0c"
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text(old + "\n")
    env = {"FILESCAN_WEBHOOK_TOKENS_FILE": str(tokens_file)}
    with run_webhook(cluster, namespace, tmp_path, env=env, tokens=()) as webhook:
        assert webhook.post("ticket", event_body("ticket"), token=old).status_code == 200
        assert webhook.post("ticket", event_body("ticket"), token=new).status_code == 401

        rotated = tmp_path / "tokens.new"
        rotated.write_text(new + "\n")
        rotated.replace(tokens_file)  # as the kubelet swaps a Secret volume's files

        body = event_body("ticket")
        wait_for(lambda: webhook.post("ticket", body, token=new).status_code == 200, timeout=10,
                 what="the rotated token to be accepted")
        assert webhook.post("ticket", event_body("ticket"), token=old).status_code == 401
        assert old not in webhook.logs() and new not in webhook.logs()


def test_http_and_listed_ip_hosts_when_allowed(cluster: Any, filescan_crd: str, namespace: str, tmp_path: Path) -> None:
    env = {"FILESCAN_ALLOW_HTTP": "true", "FILESCAN_ALLOWED_FILE_HOSTS": "127.0.0.1"}
    with run_webhook(cluster, namespace, tmp_path, env=env) as webhook:
        allowed = event_body("ticket", fileURL="http://127.0.0.1:8999/files/a.pdf")
        assert webhook.post("ticket", allowed).status_code == 200
        refused = event_body("ticket", fileURL="http://localhost:8999/files/a.pdf")
        assert webhook.post("ticket", refused).status_code == 422
        assert get_filescan(cluster, namespace, filescan_name("ticket", refused["guid"])) is None


# -- the synchronous answer -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("verdict", "result"),
    [("clean", "passed"), ("infected", "failed"), ("error", "delay"), (None, "delay")],
)
def test_sync_wait_answers_the_verdict_when_it_comes_in_time(
    cluster: Any, filescan_crd: str, namespace: str, tmp_path: Path, verdict: str | None, result: str
) -> None:
    env = {"FILESCAN_SYNC_WAIT_SECONDS": "8" if verdict else "1"}
    with run_webhook(cluster, namespace, tmp_path, env=env) as webhook:
        body = event_body("ticket")
        name = filescan_name("ticket", body["guid"])
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(webhook.post, "ticket", body)
            if verdict:
                wait_for(lambda: get_filescan(cluster, namespace, name), timeout=10, what="the FileScan")
                cluster.kubectl(
                    "patch", "fscan", name, "-n", namespace, "--subresource=status", "--type=merge",
                    "-p", json.dumps({"status": {"phase": "Reporting", "verdict": verdict}}),
                )  # fmt: skip
            answer = pending.result(timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["result"] == result

        if verdict:
            # A repost of a file with a verdict answers at once.
            again = webhook.post("ticket", body)
            assert again.json()["result"] == result


# -- the apiserver away ---------------------------------------------------------------------------


def test_apiserver_down_is_503_and_the_repost_is_stored(cluster: Any, filescan_crd: str, tmp_path: Path) -> None:
    namespace = create_namespace(cluster, "fscan-outage")
    try:
        with run_webhook(cluster, namespace, tmp_path) as webhook:
            body = event_body("ticket")
            name = filescan_name("ticket", body["guid"])
            cluster.stop_process("kube-apiserver")
            try:
                answer = webhook.post("ticket", body)
                assert answer.status_code == 503, answer.text
                assert int(answer.headers["retry-after"]) > 0
                assert webhook.client.get("/readyz").status_code == 503
                metrics = webhook.client.get("/metrics").text
                assert 'filescan_webhook_store_errors_total{kind="transient"} 1.0' in metrics
            finally:
                cluster.start_process("kube-apiserver")

            assert get_filescan(cluster, namespace, name) is None, "a 503 was answered: nothing is stored"

            def stored_repost() -> httpx.Response | None:
                answer = webhook.post("ticket", body)
                return answer if answer.status_code == 200 else None

            repost = wait_for(
                stored_repost,
                timeout=30,
                what="the repost to be stored once the apiserver is back",
                interval=0.5,
            )
            assert repost.json()["result"] == "delay"
            assert get_filescan(cluster, namespace, name) is not None
            assert webhook.client.get("/readyz").status_code == 200
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def test_missing_namespace_is_a_5xx_never_a_2xx(cluster: Any, filescan_crd: str, tmp_path: Path) -> None:
    with run_webhook(cluster, "no-such-namespace-for-filescans", tmp_path) as webhook:
        answer = webhook.post("ticket", event_body("ticket"))
        assert answer.status_code >= 500
        wait_for(lambda: '"store_error"' in webhook.logs(), timeout=10, what="the request's log line")
