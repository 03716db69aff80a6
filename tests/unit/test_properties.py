"""Hostile input (issue 7): generated Comm100 bodies against the parser, and events against the builder.

Two properties, each over thousands of shapes nobody would write by hand:

* whatever JSON arrives, :func:`parse_event` either refuses it with :class:`EventInvalid` (the
  webhook's 422) or returns an event whose FileScan the apiserver will store: the deterministic
  name, and a spec within the CRD's limits as ``manifests/crd-filescans.yaml`` declares them. Any
  other exception would be a 500, and Comm100 would repost the same body for three days;
* for every accepted event, :func:`build_scan_job` gives a JSON manifest with valid names and
  labels whose arguments carry the URL exactly as received.

The strategies are shared with ``tests/integration/test_properties_apiserver.py``, which sends a
few of the generated objects to a real apiserver.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import uuid
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.builders import build_scan_job
from controller.events import (
    SOURCES,
    EventInvalid,
    FileScanDraft,
    Source,
    filescan_draft,
    parse_event,
)
from controller.settings import FetchPolicy, ScanJobSettings, ScannerSettings
from tests.fixtures.filescans import CRD_PATH

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")

# No example database in the repository; a failure prints the falsifying example to reproduce it.
PROPERTY_SETTINGS = settings(database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---- the CRD's limits, read from the manifest ----------------------------------------------


@cache
def crd_version() -> dict[str, Any]:
    crd = yaml.safe_load(CRD_PATH.read_text())
    version: dict[str, Any] = crd["spec"]["versions"][0]
    return version


def crd_spec_schema() -> dict[str, Any]:
    schema: dict[str, Any] = crd_version()["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return schema


def crd_root_schema() -> dict[str, Any]:
    schema: dict[str, Any] = crd_version()["schema"]["openAPIV3Schema"]
    return schema


def _owner_rule(name: str, spec: Mapping[str, Any]) -> bool:
    if spec["source"] == "ticket":
        return "ticketId" in spec and "chatId" not in spec
    return "chatId" in spec and "ticketId" not in spec


def _name_rule(name: str, spec: Mapping[str, Any]) -> bool:
    lower_ascii = "".join(c.lower() if "A" <= c <= "Z" else c for c in spec["guid"])  # CEL's lowerAscii()
    return bool(name == spec["source"] + "-" + lower_ascii)


# CEL cannot be evaluated here: each rule the CRD declares on create is mirrored by a predicate,
# and an unknown rule fails the test (so a new rule in the CRD gets a mirror here).
CEL_RULES: dict[str, Callable[[str, Mapping[str, Any]], bool] | None] = {
    "self.metadata.name == self.spec.source + '-' + self.spec.guid.lowerAscii()": _name_rule,
    "self.source == 'ticket' ? (has(self.ticketId) && !has(self.chatId)) "
    ": (has(self.chatId) && !has(self.ticketId))": _owner_rule,
    "self == oldSelf": None,  # a transition rule: not evaluated on create
}


def _pattern(pattern: str) -> re.Pattern[str]:
    # ECMA-262 ``$`` is the end of input; Python's also matches before a final newline.
    return re.compile(pattern[:-1] + r"\Z" if pattern.endswith("$") else pattern)


def value_violations(path: str, value: Any, schema: Mapping[str, Any]) -> list[str]:
    """What the apiserver's OpenAPI validation would refuse in ``value`` (the keywords the CRD uses)."""
    problems: list[str] = []
    kind = schema.get("type")
    if kind == "string":
        if not isinstance(value, str):
            return [f"{path}: not a string: {value!r:.80}"]
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            problems.append(f"{path}: {len(value)} characters > maxLength {schema['maxLength']}")
        if "minLength" in schema and len(value) < schema["minLength"]:
            problems.append(f"{path}: {len(value)} characters < minLength {schema['minLength']}")
        if "pattern" in schema and not _pattern(schema["pattern"]).search(value):
            problems.append(f"{path}: does not match {schema['pattern']}: {value!r:.80}")
        if schema.get("format") == "date-time":
            if not RFC3339.fullmatch(value):
                problems.append(f"{path}: not RFC 3339: {value!r}")
            else:
                dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    elif kind == "integer":
        if not isinstance(value, int) or isinstance(value, bool):
            return [f"{path}: not an integer: {value!r:.80}"]
        if schema.get("format") == "int64" and not INT64_MIN <= value <= INT64_MAX:
            problems.append(f"{path}: {value} is not an int64")
        if "minimum" in schema and value < schema["minimum"]:
            problems.append(f"{path}: {value} < minimum {schema['minimum']}")
    else:
        raise AssertionError(f"{path}: the checker does not know type {kind!r}; teach it")
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{path}: {value!r:.80} not in {schema['enum']}")
    return problems


def crd_violations(draft: FileScanDraft) -> list[str]:
    """Every reason the apiserver would refuse (or silently prune) this FileScan's name and spec."""
    schema = crd_spec_schema()
    spec = draft.spec
    problems = [f"spec.{key}: required but missing" for key in schema["required"] if key not in spec]
    problems += [f"spec.{key}: not in the schema (would be pruned)" for key in spec if key not in schema["properties"]]
    for key, value in spec.items():
        if key in schema["properties"]:
            problems += value_violations(f"spec.{key}", value, schema["properties"][key])
    if not (len(draft.name) <= 253 and DNS1123_SUBDOMAIN.fullmatch(draft.name)):
        problems.append(f"metadata.name: not a DNS-1123 subdomain: {draft.name!r}")
    if problems:
        return problems  # the CEL rules assume a well-typed spec
    for where in (crd_root_schema(), schema):
        for rule in where.get("x-kubernetes-validations", []):
            assert rule["rule"] in CEL_RULES, f"unknown CEL rule in the CRD, mirror it here: {rule['rule']}"
            check = CEL_RULES[rule["rule"]]
            if check is not None and not check(draft.name, spec):
                problems.append(f"CEL rule failed: {rule['message']}")
    return problems


def test_the_checker_itself_catches_what_the_crd_refuses() -> None:
    """The property below is only as good as this checker: it must refuse each kind of bad spec."""
    guid = "12B76589-6BA7-4011-AA23-8779594AAB11"
    good = filescan_draft(parse_event("ticket", valid_body("ticket", guid=guid)))
    assert crd_violations(good) == []
    limits = crd_spec_schema()["properties"]
    bad_specs: list[dict[str, Any]] = [
        {"fileName": "x" * (limits["fileName"]["maxLength"] + 1)},
        {"fileURL": ""},
        {"fileSize": -1},
        {"fileSize": 2**63},
        {"fileSize": True},
        {"ticketId": "7"},
        {"guid": guid + "\n"},
        {"guid": "zz"},
        {"source": "email"},
        {"eventTime": "yesterday"},
        {"chatId": 7},
        {"unknown": 1},
    ]
    for change in bad_specs:
        spec = good.spec | change
        assert crd_violations(FileScanDraft(good.name, spec)), change
    for missing in crd_spec_schema()["required"]:
        spec = {k: v for k, v in good.spec.items() if k != missing}
        assert crd_violations(FileScanDraft(good.name, spec)), missing
    assert crd_violations(FileScanDraft(good.name.upper(), good.spec))
    assert crd_violations(FileScanDraft("livechat-" + guid.lower(), good.spec))


# ---- strategies ----------------------------------------------------------------------------

# Anything json.loads can return, NaN and infinities included (Python's decoder accepts them).
json_scalars = (
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=8,
)

# File names as users produce them and as attackers do: any code point (controls, separators,
# bidi overrides, lone surrogates), path-like names, and names at the length limits.
hostile_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
path_like = st.lists(
    st.sampled_from(["..", ".", "/", "\\", "C:", "\x00", "\n", "\u202e", "report", "exe", "é", "😀", " "]),
    min_size=1, max_size=12,
).map("".join)


def sized_text(limit: int) -> st.SearchStrategy[str]:
    """Strings around ``limit`` characters: below it, at it, just past it; ASCII and not."""
    lengths = st.sampled_from([0, 1, limit - 1, limit, limit + 1]) | st.integers(0, limit + 2)
    return st.builds(lambda n, ch: ch * n, lengths, st.sampled_from(["a", "é", "😀", "\x00", "/"]))


guids = st.uuids().map(str) | st.uuids().map(lambda u: str(u).upper()) | st.uuids().map(
    lambda u: "".join(c.upper() if i % 2 else c for i, c in enumerate(str(u)))
)
offsets = st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1).map(
    lambda minutes: dt.timezone(dt.timedelta(minutes=minutes))
)
# Any datetime at any offset (rarely the calendar's edges; edge_moments aims at those).
any_moments = st.builds(lambda d, tz: d.replace(tzinfo=tz), st.datetimes(), offsets)
sane_moments = st.builds(
    lambda d, tz: d.replace(tzinfo=tz),
    st.datetimes(min_value=dt.datetime(1970, 1, 2), max_value=dt.datetime(2200, 1, 1)),
    offsets,
)
# The calendar's first and last instants, shifted by an offset: UTC may lie outside the calendar.
edge_moments = st.builds(lambda d, tz: d.replace(tzinfo=tz), st.sampled_from([dt.datetime.min, dt.datetime.max]),
                         offsets)
event_times = (
    any_moments.map(dt.datetime.isoformat)
    | edge_moments.map(dt.datetime.isoformat)
    | st.datetimes().map(dt.datetime.isoformat)  # naive: taken as UTC
    | st.integers(min_value=-(2**40), max_value=2**40)  # pydantic reads numbers as Unix time
    | json_values
)
sizes = st.integers(min_value=0, max_value=INT64_MAX)
hostile_ints = (
    sizes | sizes.map(str) | st.integers(min_value=-(2**70), max_value=2**70) | st.floats()
    | st.booleans() | st.sampled_from(["", " 7", "7 ", "1_000", "0x10", "١٢", "1e3", "-0"])
)
urls = (
    st.builds(lambda path: "https://files.comm100.test/" + path, hostile_text)
    | st.builds(lambda n: "https://files.comm100.test/" + "p" * n, st.integers(4070, 4080))
    | hostile_text
)

FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "guid": guids | hostile_text | json_values,
    "fileName": hostile_text | path_like | sized_text(1024) | json_values,
    "fileExtension": hostile_text | sized_text(64) | json_values,
    "fileSize": hostile_ints | json_values,
    "fileURL": urls | sized_text(4096) | json_values,
    "fileLocalPath": hostile_text | path_like | sized_text(4096) | json_values,
    "ticketId": hostile_ints | json_values,
    "chatId": hostile_ints | json_values,
}
ENVELOPE_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "event": st.just("fileUploaded") | hostile_text | json_values,
    "eventId": hostile_text | sized_text(256) | json_values,
    "eventTime": event_times,
}


EDGE_TIMES = ["0001-01-01T00:00:00Z", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59Z",
              "9999-12-31T23:59:59-00:01"]


def crd_boundary_values(key: str) -> list[Any]:
    """Values at and just past the limits the CRD declares for ``key`` (read from the manifest)."""
    schema = crd_spec_schema()["properties"][key]
    if schema["type"] == "integer":
        low = schema.get("minimum", INT64_MIN)
        return [low - 1, low, INT64_MAX, INT64_MAX + 1, True, False]
    if schema.get("format") == "date-time":
        return EDGE_TIMES
    lengths = [schema["maxLength"], schema["maxLength"] + 1] if "maxLength" in schema else []
    lengths += [schema["minLength"] - 1] if "minLength" in schema else []
    return [char * n for n in lengths for char in ("a", "é", "😀", "\x00")]


BODY_KEYS = sorted(FIELD_VALUES | ENVELOPE_VALUES)


@st.composite
def one_bad_field(draw: st.DrawFn) -> tuple[Source, Any]:
    """A valid body but for one field, so the parser must get through every other check to reach it."""
    source, body = draw(valid_events())
    nested = isinstance(body.get("payload"), dict)
    key = draw(st.sampled_from(BODY_KEYS))
    where = body["payload"] if nested and key in FIELD_VALUES else body
    how = draw(st.sampled_from(["remove", "hostile", "boundary"]))
    if how == "remove":
        where.pop(key, None)
    elif how == "hostile":
        where[key] = draw((FIELD_VALUES | ENVELOPE_VALUES)[key])
    else:
        where[key] = draw(st.sampled_from(crd_boundary_values(key)))
    return source, body


@st.composite
def hostile_event_shapes(draw: st.DrawFn) -> Any:
    """Event-shaped bodies in any of the shapes, every field hostile or missing."""
    files = draw(st.fixed_dictionaries({}, optional=FIELD_VALUES))
    envelope = draw(st.fixed_dictionaries({}, optional=ENVELOPE_VALUES))
    extra = draw(st.dictionaries(st.text(max_size=6), json_values, max_size=2))
    shape = draw(st.sampled_from(["flat", "nested", "nested-envelope-inside", "bad-payload"]))
    if shape == "flat":
        return extra | files | envelope
    if shape == "nested":
        return extra | envelope | {"payload": files}
    if shape == "nested-envelope-inside":
        return extra | {"payload": files | envelope}
    return extra | files | envelope | {"payload": draw(json_values)}


# Half the bodies are valid but for one field; the rest are event-shaped garbage or any JSON at all.
json_ish_cases = st.one_of(
    one_bad_field(),
    one_bad_field(),
    st.tuples(st.sampled_from(SOURCES), hostile_event_shapes()),
    st.tuples(st.sampled_from(SOURCES), json_values),
)


def valid_body(source: Source, *, guid: str, nested: bool = False, **fields: Any) -> dict[str, Any]:
    owner = "ticketId" if source == "ticket" else "chatId"
    files = {owner: 7, "guid": guid, "fileName": "a.pdf", "fileExtension": "pdf", "fileSize": 10,
             "fileURL": "https://files.comm100.test/a", "fileLocalPath": "/a"} | fields
    envelope = {"event": "fileUploaded", "eventId": "evt-1"}
    return envelope | {"payload": files} if nested else envelope | files


@st.composite
def valid_events(draw: st.DrawFn) -> tuple[Source, dict[str, Any]]:
    """A source and a body the parser must accept: every field within its limits, in either shape."""
    source: Source = draw(st.sampled_from(SOURCES))
    nested = draw(st.booleans())
    owner_id = draw(sizes)
    fields: dict[str, Any] = {
        # Any character UTF-8 can carry: a lone surrogate (json.loads makes one of "\\ud800") is refused.
        "fileName": draw(st.text(st.characters(codec="utf-8"), min_size=1, max_size=1024) | path_like),
        "fileSize": draw(sizes),
        "fileURL": draw(
            st.builds(lambda p: "https://files.comm100.test/" + p, st.text(max_size=200))
            | st.text(min_size=1, max_size=4096)
        ),
    }
    optional = draw(st.fixed_dictionaries({}, optional={
        "fileExtension": st.text(max_size=64),
        "fileLocalPath": st.text(max_size=4096) | path_like,
    }))
    body = valid_body(source, guid=draw(guids), nested=nested, **fields, **optional)
    files = body["payload"] if nested else body
    files["ticketId" if source == "ticket" else "chatId"] = owner_id
    body["eventId"] = draw(st.text(min_size=1, max_size=256))
    if draw(st.booleans()):
        moment = draw(sane_moments)
        body["eventTime"] = moment.isoformat()
    if nested and draw(st.booleans()):  # envelope fields inside payload, as some revisions put them
        for key in ("eventId", "eventTime"):
            if key in body:
                body["payload"][key] = body.pop(key)
    return source, body


# ---- (a) any body: refused cleanly, or stored as the CRD allows ----------------------------


@settings(PROPERTY_SETTINGS, max_examples=600)
@given(case=json_ish_cases)
def test_any_body_is_refused_cleanly_or_becomes_a_storable_filescan(case: tuple[Source, Any]) -> None:
    refused_cleanly_or_storable(*case)


def refused_cleanly_or_storable(source: Source, body: Any) -> None:
    try:
        event = parse_event(source, body)
    except EventInvalid as refused:
        assert refused.errors, "a refusal names at least one field"
        return
    draft = filescan_draft(event)
    assert draft.name == f"{source}-{event.guid.lower()}"
    assert crd_violations(draft) == []
    # The spec is what was received: nothing is trimmed or rewritten on the way.
    fields = body["payload"] if isinstance(body.get("payload"), Mapping) else body
    for key in ("fileName", "fileURL", "guid"):
        assert draft.spec[key] == fields[key], key
    for key in ("fileSize", "ticketId" if source == "ticket" else "chatId"):  # the other one is ignored
        assert not isinstance(fields.get(key), bool), f"{key}={fields[key]!r}: a boolean is not a number"
    json.dumps(draft.spec, allow_nan=False)


def _boundary_id(value: Any) -> str:
    if isinstance(value, str) and len(value) > 3 and len(set(value)) == 1:
        return f"{len(value)}x{value[0].encode('unicode_escape').decode()}"
    return repr(value)


@pytest.mark.parametrize(
    ("key", "value"),
    [pytest.param(k, v, id=f"{k}={_boundary_id(v)}") for k in BODY_KEYS for v in crd_boundary_values(k)],
)
@settings(PROPERTY_SETTINGS, max_examples=5)
@given(event=valid_events())
def test_each_limit_of_the_crd_holds_at_its_boundary(key: str, value: Any, event: tuple[Source, Any]) -> None:
    """Every limit the CRD declares, at and just past it, in otherwise valid bodies of both shapes."""
    source, body = event
    nested = isinstance(body.get("payload"), dict)
    (body["payload"] if nested and key in FIELD_VALUES else body)[key] = value
    refused_cleanly_or_storable(source, body)


@settings(PROPERTY_SETTINGS, max_examples=300)
@given(event=valid_events())
def test_valid_events_are_accepted(event: tuple[Source, dict[str, Any]]) -> None:
    """The generator of (b) is honest: what it calls valid, the parser accepts, as the CRD allows."""
    source, body = event
    draft = filescan_draft(parse_event(source, body))
    assert crd_violations(draft) == []


# ---- (b) any accepted event: a valid Job manifest --------------------------------------------


def filescan_object(draft: FileScanDraft, namespace: str = "scans") -> dict[str, Any]:
    return {
        "apiVersion": "comm100.io/v1alpha1",
        "kind": "FileScan",
        "metadata": {"name": draft.name, "namespace": namespace, "uid": str(uuid.uuid4())},
        "spec": draft.spec,
    }


def manifest_problems(job: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    name = job["metadata"]["name"]
    if not (len(name) <= 63 and DNS1123_LABEL.fullmatch(name)):
        problems.append(f"Job name not a DNS-1123 label: {name!r}")
    for where, labels in (("Job", job["metadata"]["labels"]), ("pod", job["spec"]["template"]["metadata"]["labels"])):
        for key, value in labels.items():
            prefix, _, label_name = key.rpartition("/")
            if prefix and not (len(prefix) <= 253 and DNS1123_SUBDOMAIN.fullmatch(prefix)):
                problems.append(f"{where} label key prefix invalid: {key!r}")
            if not (len(label_name) <= 63 and LABEL_NAME.fullmatch(label_name)):
                problems.append(f"{where} label key invalid: {key!r}")
            if not (isinstance(value, str) and len(value) <= 63 and LABEL_VALUE.fullmatch(value)):
                problems.append(f"{where} label {key} has an invalid value: {value!r}")
    # The Job controller labels pods with the Job's name too (job-name, batch.kubernetes.io/job-name).
    if not LABEL_VALUE.fullmatch(name) or len(name) > 63:
        problems.append(f"the Job name cannot be a pod label value: {name!r}")
    return problems


@settings(PROPERTY_SETTINGS, max_examples=300)
@given(event=valid_events(), attempt=st.integers(min_value=1, max_value=1000))
def test_any_accepted_event_builds_a_valid_job(event: tuple[Source, dict[str, Any]], attempt: int) -> None:
    source, body = event
    draft = filescan_draft(parse_event(source, body))
    job = build_scan_job(filescan_object(draft), attempt, ScanJobSettings(), ScannerSettings(),
                         FetchPolicy(allowed_file_hosts=["files.comm100.test"]))
    text = json.dumps(job, allow_nan=False)
    assert json.loads(text) == job
    assert manifest_problems(job) == []
    [container] = job["spec"]["template"]["spec"]["containers"]
    fields = body.get("payload") or body
    assert container["args"] == ["--expected-size", str(fields["fileSize"])]
    assert {"name": "FILESCAN_SCAN_URL", "value": fields["fileURL"]} in container["env"]
    assert not math.isnan(float(container["args"][1]))


def test_manifest_checker_refuses_bad_names_and_labels() -> None:
    draft = filescan_draft(parse_event("ticket", valid_body("ticket", guid=str(uuid.uuid4()))))
    good = build_scan_job(filescan_object(draft), 1, ScanJobSettings(), ScannerSettings(), FetchPolicy())
    assert manifest_problems(good) == []
    breakers: list[Callable[[dict[str, Any]], None]] = [
        lambda j: j["metadata"].__setitem__("name", "Upper-Case"),
        lambda j: j["metadata"].__setitem__("name", "x" * 64),
        lambda j: j["metadata"]["labels"].__setitem__("comm100.io/filescan", "bad value!"),
        lambda j: j["metadata"]["labels"].__setitem__("comm100.io/filescan", "v" * 64),
        lambda j: j["spec"]["template"]["metadata"]["labels"].__setitem__("Bad_Prefix/x", "v"),
    ]
    for breaks in breakers:
        broken = json.loads(json.dumps(good))
        breaks(broken)
        assert manifest_problems(broken)


@pytest.mark.parametrize("when", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-00:01"])
def test_an_event_time_that_leaves_the_calendar_in_utc_is_refused(when: str) -> None:
    """Found by the property above: converting these to UTC overflows the datetime range."""
    body = valid_body("ticket", guid=str(uuid.uuid4()), nested=True) | {"eventTime": when}
    with pytest.raises(EventInvalid) as refused:
        parse_event("ticket", body)
    assert [error.location for error in refused.value.errors] == ["eventTime"]

