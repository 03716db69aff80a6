"""The Comm100 event models: both shapes, both sources, field-naming errors, and the CRD in step."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest
import yaml

from controller.events import (
    GUID_PATTERN,
    MAX_LENGTHS,
    SOURCES,
    EventInvalid,
    event_json_schema,
    filescan_draft,
    filescan_name,
    parse_event,
)
from tests.fixtures.filescans import CRD_PATH, event_body

GUID = "12B76589-6BA7-4011-AA23-8779594AAB11"


def _spec_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD_PATH.read_text())
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return schema


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("nested", [False, True], ids=["flat", "payload"])
def test_both_shapes_become_the_same_filescan(source: str, nested: bool) -> None:
    body = event_body(source, nested=nested, guid=GUID)
    draft = filescan_draft(parse_event(source, body))  # type: ignore[arg-type]

    owner = "ticketId" if source == "ticket" else "chatId"
    other = "chatId" if source == "ticket" else "ticketId"
    fields = body["payload"] if nested else body
    assert draft.name == f"{source}-{GUID.lower()}"
    assert draft.spec["source"] == source
    assert draft.spec["guid"] == GUID, "the spec keeps the guid as received"
    assert draft.spec[owner] == 4242
    assert other not in draft.spec
    for key in ("eventId", "event"):
        assert draft.spec[key] == body[key]
    for key in ("fileName", "fileExtension", "fileSize", "fileURL", "fileLocalPath"):
        assert draft.spec[key] == fields[key]
    if nested:
        assert draft.spec["eventTime"] == "2025-03-01T12:00:00Z"
    else:
        assert "eventTime" not in draft.spec


def test_unknown_fields_are_ignored_at_both_levels() -> None:
    body = event_body("livechat", nested=True, siteId=10001, payload={"visitorId": "v-1", "extra": [1, 2]})
    draft = filescan_draft(parse_event("livechat", body))
    assert "siteId" not in draft.spec and "visitorId" not in draft.spec and "extra" not in draft.spec


def test_envelope_fields_may_sit_inside_payload() -> None:
    body = event_body("ticket", nested=True)
    event_id = body.pop("eventId")
    body["payload"]["eventId"] = event_id
    body["payload"]["eventTime"] = body.pop("eventTime")
    event = parse_event("ticket", body)
    assert event.event_id == event_id
    assert event.event_time == dt.datetime(2025, 3, 1, 12, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("2025-03-01T14:00:00+02:00", "2025-03-01T12:00:00Z"),
        ("2025-03-01T12:00:00", "2025-03-01T12:00:00Z"),  # naive: taken as UTC
        ("2025-03-01T12:00:00.250Z", "2025-03-01T12:00:00.250000Z"),
    ],
)
def test_event_time_is_stored_in_utc(given: str, stored: str) -> None:
    body = event_body("ticket", nested=True, eventTime=given)
    assert filescan_draft(parse_event("ticket", body)).spec["eventTime"] == stored


def test_integers_accept_digit_strings() -> None:
    # Lenient on purpose: a sender that quotes numbers would otherwise be refused (and repost) forever.
    draft = filescan_draft(parse_event("ticket", event_body("ticket", fileSize="77", ticketId="9")))
    assert draft.spec["fileSize"] == 77 and draft.spec["ticketId"] == 9


@pytest.mark.parametrize(
    ("source", "body", "field"),
    [
        ("ticket", event_body("ticket", guid="not-a-guid"), "guid"),
        ("ticket", {k: v for k, v in event_body("ticket").items() if k != "guid"}, "guid"),
        ("ticket", event_body("ticket", fileSize="big"), "fileSize"),
        ("ticket", event_body("ticket", fileSize=-1), "fileSize"),
        ("ticket", event_body("ticket", fileSize=True), "fileSize"),
        ("ticket", event_body("ticket", fileSize=2**63), "fileSize"),
        ("ticket", event_body("ticket", ticketId=1.5), "ticketId"),
        ("ticket", event_body("livechat"), "ticketId"),
        ("livechat", event_body("ticket"), "chatId"),
        ("livechat", event_body("livechat", nested=True, payload={"chatId": None}), "payload.chatId"),
        ("livechat", event_body("livechat", nested=True, payload={"fileSize": "x"}), "payload.fileSize"),
        ("ticket", event_body("ticket", event="fileDeleted"), "event"),
        ("ticket", event_body("ticket", eventId=""), "eventId"),
        ("ticket", event_body("ticket", eventId=12), "eventId"),
        ("ticket", event_body("ticket", fileName="x" * 1025), "fileName"),
        ("ticket", event_body("ticket", fileURL=""), "fileURL"),
        ("ticket", event_body("ticket", fileURL="https://h/" + "a" * 4096), "fileURL"),
        ("ticket", event_body("ticket", nested=True, eventTime="yesterday"), "eventTime"),
        ("ticket", {**event_body("ticket"), "payload": "flat?"}, "payload"),
        ("ticket", [event_body("ticket")], "body"),
    ],
)
def test_errors_name_the_field(source: str, body: Any, field: str) -> None:
    with pytest.raises(EventInvalid) as caught:
        parse_event(source, body)  # type: ignore[arg-type]
    locations = [error.location for error in caught.value.errors]
    assert field in locations, caught.value.errors
    assert field in str(caught.value)


def test_errors_never_echo_the_value() -> None:
    secret_url = "https://h/?sig=" + "s" * 5000
    with pytest.raises(EventInvalid) as caught:
        parse_event("ticket", event_body("ticket", fileURL=secret_url))
    assert "sig=" not in str(caught.value)


def test_name_is_deterministic_and_case_insensitive() -> None:
    assert filescan_name("livechat", GUID) == filescan_name("livechat", GUID.lower())
    assert filescan_name("ticket", GUID) != filescan_name("livechat", GUID)
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", filescan_name("livechat", GUID))
    assert len(filescan_name("livechat", GUID)) <= 63


def test_crd_spec_schema_matches_the_models() -> None:
    """What the webhook accepts is exactly what the CRD stores: same fields, limits and pattern."""
    schema = _spec_schema()
    properties = schema["properties"]
    written = set()
    for source in SOURCES:
        for nested in (False, True):
            written |= set(filescan_draft(parse_event(source, event_body(source, nested=nested))).spec)
    assert set(properties) == written
    for name, limit in MAX_LENGTHS.items():
        assert properties[name]["maxLength"] == limit, name
    assert properties["guid"]["pattern"] == GUID_PATTERN
    assert properties["source"]["enum"] == list(SOURCES)
    for name in ("fileSize", "ticketId", "chatId"):
        assert properties[name]["type"] == "integer" and properties[name]["minimum"] == 0, name
        assert properties[name]["format"] == "int64", name
    for name in properties:
        if properties[name]["type"] == "string" and name not in ("eventTime", "source"):
            assert "maxLength" in properties[name], f"{name} has no maxLength"
    # Every field the CRD requires is one the models require too.
    model_required = set(event_json_schema("ticket")["anyOf"][0]["required"])
    assert set(schema["required"]) - {"source"} <= model_required


def test_crd_declares_immutability_and_the_owner_rule() -> None:
    rules = [rule["rule"] for rule in _spec_schema()["x-kubernetes-validations"]]
    assert "self == oldSelf" in rules
    assert any("ticketId" in rule and "chatId" in rule for rule in rules)


def test_openapi_schema_has_both_shapes_without_refs() -> None:
    for source in SOURCES:
        schema = event_json_schema(source)
        assert len(schema["anyOf"]) == 2
        assert "$ref" not in str(schema) and "$defs" not in str(schema)
