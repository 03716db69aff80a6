"""The Comm100 ``fileUploaded`` events, and the FileScan each one becomes.

Design decisions:

* Two body shapes are accepted for each source: the seed's flat body (every field at the top
  level) and the newer one whose file fields sit under ``payload`` beside ``eventTime``. The shape
  is chosen by whether a ``payload`` object is present, and each shape has its own model, so an
  error names the field where the sender put it (``payload.fileSize``, not ``fileSize``). In the
  nested shape the envelope fields (``event``, ``eventId``, ``eventTime``) may sit at either level,
  because the public spec's revisions disagree on where.
* Unknown fields are ignored (Comm100 may add some), but every field we store is checked with the
  same limits the CRD's OpenAPI schema enforces (``manifests/crd-filescans.yaml``; a unit test
  keeps the two in step), so a 2xx is never answered for an event the apiserver would refuse.
* Integers accept JSON numbers and digit strings but never booleans (``true`` is not a size);
  ``eventTime`` accepts RFC 3339 (a naive time is taken as UTC) and is stored normalised to UTC.
* The FileScan name is deterministic, ``<source>-<guid lowercased>``, so a repost of a known file
  collides (409) instead of starting a second scan. The spec keeps the event as received.
* This module is pure: no I/O, no framework. The webhook parses bytes into a mapping and calls
  :func:`parse_event`; the operator may import the models and :func:`filescan_name`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeAlias

import annotated_types
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

Source: TypeAlias = Literal["ticket", "livechat"]
SOURCES: tuple[Source, ...] = ("ticket", "livechat")

INT64_MAX = 2**63 - 1
GUID_PATTERN = r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$"

# Longest accepted value of each string field; the CRD schema declares the same maxLength.
MAX_LENGTHS: dict[str, int] = {
    "event": 64,
    "eventId": 256,
    "guid": 36,
    "fileName": 1024,
    "fileExtension": 64,
    "fileURL": 4096,
    "fileLocalPath": 4096,
}


def _refuse_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected an integer, got a boolean")
    return value


NonNegativeInt64 = Annotated[int, annotated_types.Interval(ge=0, le=INT64_MAX), BeforeValidator(_refuse_bool)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class _Envelope(_Model):
    event: Literal["fileUploaded"]
    event_id: str = Field(alias="eventId", min_length=1, max_length=MAX_LENGTHS["eventId"])
    event_time: dt.datetime | None = Field(default=None, alias="eventTime")

    @field_validator("event_time", mode="after")
    @classmethod
    def _normalise_time(cls, value: dt.datetime | None) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        try:
            return value.astimezone(dt.UTC)
        except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00: a ValueError is a 422, not a 500
            raise ValueError("out of range once converted to UTC") from None


class _FileFields(_Model):
    guid: str = Field(pattern=GUID_PATTERN, max_length=MAX_LENGTHS["guid"])
    file_name: str = Field(alias="fileName", min_length=1, max_length=MAX_LENGTHS["fileName"])
    file_extension: str = Field(default="", alias="fileExtension", max_length=MAX_LENGTHS["fileExtension"])
    file_size: NonNegativeInt64 = Field(alias="fileSize")
    file_url: str = Field(alias="fileURL", min_length=1, max_length=MAX_LENGTHS["fileURL"])
    file_local_path: str = Field(default="", alias="fileLocalPath", max_length=MAX_LENGTHS["fileLocalPath"])


class TicketFile(_FileFields):
    """The file fields of a ticket event."""

    ticket_id: NonNegativeInt64 = Field(alias="ticketId")


class LivechatFile(_FileFields):
    """The file fields of a live chat event; ``chatId`` may be an offline-message id."""

    chat_id: NonNegativeInt64 = Field(alias="chatId")


class FlatTicketEvent(_Envelope, TicketFile):
    """The seed's ticket body: every field at the top level."""


class FlatLivechatEvent(_Envelope, LivechatFile):
    """The seed's live chat body: every field at the top level."""


_ENVELOPE_FIELDS = ("event", "eventId", "eventTime")


class _Nested(_Envelope):
    @model_validator(mode="before")
    @classmethod
    def _lift_envelope(cls, data: Any) -> Any:
        # Revisions of the public spec disagree on whether eventId and eventTime sit beside or
        # inside payload: take them from payload when the top level lacks them.
        if isinstance(data, Mapping) and isinstance(data.get("payload"), Mapping):
            lifted = dict(data)
            for key in _ENVELOPE_FIELDS:
                if key not in lifted and key in data["payload"]:
                    lifted[key] = data["payload"][key]
            return lifted
        return data


class NestedTicketEvent(_Nested):
    """The newer ticket body: envelope at the top, file fields under ``payload``."""

    payload: TicketFile


class NestedLivechatEvent(_Nested):
    """The newer live chat body: envelope at the top, file fields under ``payload``."""

    payload: LivechatFile


AnyEvent: TypeAlias = FlatTicketEvent | FlatLivechatEvent | NestedTicketEvent | NestedLivechatEvent

_MODELS: dict[tuple[Source, bool], type[AnyEvent]] = {
    ("ticket", False): FlatTicketEvent,
    ("livechat", False): FlatLivechatEvent,
    ("ticket", True): NestedTicketEvent,
    ("livechat", True): NestedLivechatEvent,
}


@dataclass(frozen=True)
class FieldError:
    """One problem with one field: ``location`` is dotted (``payload.fileSize``), or ``body``."""

    location: str
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"


class EventInvalid(ValueError):
    """The body is not a valid event; ``errors`` names each offending field."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(str(error) for error in errors))


@dataclass(frozen=True)
class FileUploaded:
    """A validated ``fileUploaded`` event, whatever shape it arrived in."""

    source: Source
    event: str
    event_id: str
    event_time: dt.datetime | None
    ticket_id: int | None
    chat_id: int | None
    guid: str
    file_name: str
    file_extension: str
    file_size: int
    file_url: str
    file_local_path: str


@dataclass(frozen=True)
class FileScanDraft:
    """What the webhook asks the apiserver to store: the FileScan's name and spec."""

    name: str
    spec: dict[str, Any]


def _location(loc: tuple[int | str, ...]) -> str:
    # pydantic reports aliases in locations, which are the names the sender used.
    return ".".join(str(part) for part in loc) or "body"


def parse_event(source: Source, body: Any) -> FileUploaded:
    """Validate a decoded JSON body sent to ``source``'s endpoint; raise :class:`EventInvalid`."""
    if not isinstance(body, Mapping):
        raise EventInvalid([FieldError("body", "must be a JSON object")])
    nested = "payload" in body
    if nested and not isinstance(body["payload"], Mapping):
        raise EventInvalid([FieldError("payload", "must be a JSON object")])
    model = _MODELS[(source, nested)]
    try:
        parsed = model.model_validate(body)
    except ValidationError as error:
        raise EventInvalid(
            [FieldError(_location(item["loc"]), item["msg"]) for item in error.errors(include_url=False)]
        ) from None
    fields: TicketFile | LivechatFile
    fields = parsed.payload if isinstance(parsed, NestedTicketEvent | NestedLivechatEvent) else parsed
    return FileUploaded(
        source=source,
        event=parsed.event,
        event_id=parsed.event_id,
        event_time=parsed.event_time,
        ticket_id=fields.ticket_id if isinstance(fields, TicketFile) else None,
        chat_id=fields.chat_id if isinstance(fields, LivechatFile) else None,
        guid=fields.guid,
        file_name=fields.file_name,
        file_extension=fields.file_extension,
        file_size=fields.file_size,
        file_url=fields.file_url,
        file_local_path=fields.file_local_path,
    )


def filescan_name(source: Source, guid: str) -> str:
    """The FileScan's deterministic name: a repost of the same file maps to the same object."""
    return f"{source}-{guid.lower()}"


def format_time(value: dt.datetime) -> str:
    """RFC 3339 in UTC with a ``Z``, the form the CRD's ``date-time`` fields hold."""
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def filescan_draft(event: FileUploaded) -> FileScanDraft:
    """The FileScan for an event: its deterministic name and the event as received, as spec."""
    spec: dict[str, Any] = {
        "source": event.source,
        "event": event.event,
        "eventId": event.event_id,
    }
    if event.event_time is not None:
        spec["eventTime"] = format_time(event.event_time)
    if event.ticket_id is not None:
        spec["ticketId"] = event.ticket_id
    if event.chat_id is not None:
        spec["chatId"] = event.chat_id
    spec |= {
        "guid": event.guid,
        "fileName": event.file_name,
        "fileExtension": event.file_extension,
        "fileSize": event.file_size,
        "fileURL": event.file_url,
        "fileLocalPath": event.file_local_path,
    }
    return FileScanDraft(name=filescan_name(event.source, event.guid), spec=spec)


def _inline(node: Any, defs: Mapping[str, Any]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(defs[ref.removeprefix("#/$defs/")], defs)
        return {key: _inline(value, defs) for key, value in node.items()}
    if isinstance(node, list):
        return [_inline(item, defs) for item in node]
    return node


def event_json_schema(source: Source) -> dict[str, Any]:
    """JSON Schema of both body shapes for ``source``, self-contained (no ``$ref``), for OpenAPI."""
    shapes = []
    for nested in (False, True):
        schema = _MODELS[(source, nested)].model_json_schema(by_alias=True)
        defs = schema.pop("$defs", {})
        shapes.append(_inline(schema, defs))
    return {"anyOf": shapes}
