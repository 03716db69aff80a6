"""``filescan webhook``: Comm100 ``fileUploaded`` events in, FileScans durably stored.

Design decisions:

* A 2xx means "stored in etcd". The FileScan is created before answering; when it cannot be
  (apiserver down, slow, failing) the answer is 503 with ``Retry-After``, so Comm100's repost
  becomes our retry. The name is deterministic (``<source>-<guid>``), so a repost of a stored
  event meets 409 and is answered exactly as the first post was: nothing is created twice and no
  second scan starts. The process is stateless and can be scaled out freely.
* Cheap refusals come first and expensive work last: a pure ASGI middleware refuses non-JSON
  content types (415) and bodies over 64 KiB (413, reading at most 64 KiB + 1 byte) before any
  parsing; then the token is checked (401, before the body is even decoded, so an unauthenticated
  caller learns nothing about our validation); then the event is validated (422 naming the
  field) and the ``fileURL`` is held to the fetch policy (422), so a refused URL never reaches a
  scan Job. None of these stores anything.
* Tokens are accepted from the ``token`` query parameter (Comm100's webhook settings only take a
  URL), ``Authorization: Bearer`` or ``X-Webhook-Token``, and compared with ``hmac.compare_digest``
  against every configured token, without stopping at the first match, so rotation (several
  tokens at once) costs no timing signal.
* Secrets stay out of logs: one JSON line per webhook request (source, guid, outcome, latency),
  never a header, a query string or a file URL. uvicorn's access log, which prints the request
  line with its query string (``?token=…``), is switched off, and the middleware logs instead.
* ``create_app`` is a factory: settings and the :class:`~controller.kube.KubeClient` are injected
  (tests build apps against the real apiserver with their own settings), and every app has its own
  Prometheus registry, so two apps in one process do not share counters.
* With ``FILESCAN_SYNC_WAIT_SECONDS`` > 0 the webhook watches the FileScan for up to that long and
  answers ``passed`` for ``clean`` and ``failed`` for ``infected``. Any other verdict (``error``,
  ``skipped``) or no verdict in time answers ``delay``: the operator's policy decides those and
  reports them through the API, and ``passed`` is never said before a scan.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from pydantic import BaseModel, Field, SecretStr, ValidationError

from controller.events import (
    SOURCES,
    EventInvalid,
    FieldError,
    FileUploaded,
    Source,
    event_json_schema,
    filescan_draft,
    parse_event,
)
from controller.kube import (
    AlreadyExists,
    KubeClient,
    KubeError,
    KubeInvalid,
    KubeTransientError,
)
from controller.logs import configure_logging
from controller.settings import Settings, load_settings
from controller.urls import URLRefused, check_file_url

MAX_BODY_BYTES: Final = 64 * 1024
WEBHOOK_PREFIX: Final = "/webhooks"
READY_TIMEOUT_SECONDS: Final = 2.0

log = logging.getLogger("filescan.webhook")
request_log = logging.getLogger("filescan.webhook.requests")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

Outcome = Literal[
    "created",
    "duplicate",
    "unauthorized",
    "invalid",
    "url_refused",
    "too_large",
    "unsupported_media_type",
    "unavailable",
    "store_error",
    "error",
]


# -- logging: controller.logs (JSON lines; uvicorn's access log off, it prints query strings) --

# -- metrics ----------------------------------------------------------------------------------


class WebhookMetrics:
    """The webhook's Prometheus metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.requests = Counter(
            "filescan_webhook_requests",
            "Webhook requests by source and outcome.",
            ["source", "outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "filescan_webhook_request_duration_seconds",
            "Time from request to answer, by source.",
            ["source"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.store_errors = Counter(
            "filescan_webhook_store_errors",
            "FileScans that could not be stored, by kind (transient, invalid, permanent).",
            ["kind"],
            registry=self.registry,
        )


# -- the gate: size and content type before anything else, one log line per request ------------


def _json_media_type(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


_OUTCOME_FOR_STATUS: dict[int, Outcome] = {
    401: "unauthorized",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
    503: "unavailable",
}


_SOURCE_FOR_PATH: dict[str, Source] = {f"{WEBHOOK_PREFIX}/{source}": source for source in SOURCES}


def _outcome_for_status(status: int) -> Outcome:
    return _OUTCOME_FOR_STATUS.get(status, "error")


Endpoint = Callable[[Source, Request], Awaitable[Response]]


class RequestGate:
    """Pure ASGI middleware for ``/webhooks/*``: 415 and 413 before parsing; one log line each.

    The body is read here, at most ``max_body + 1`` bytes, and replayed to the app, so a huge or
    endless body costs 64 KiB of memory, whatever its Content-Length says.

    A POST to an event endpoint then goes from here straight to ``endpoint`` (the one function both
    routes call), past the routing, exception and dependency layers that FastAPI would run first:
    about an eighth of the process's CPU per event. The FastAPI routes still declare both endpoints,
    for the OpenAPI document; every other request reaches the app as usual.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: WebhookMetrics,
        endpoint: Endpoint | None = None,
        max_body: int = MAX_BODY_BYTES,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.endpoint = endpoint
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope["path"]).startswith(WEBHOOK_PREFIX + "/"):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state: dict[str, Any] = scope.setdefault("state", {})
        endpoint_source = _SOURCE_FOR_PATH.get(str(scope["path"]))
        source = endpoint_source or "unknown"
        status = 500
        outcome: Outcome | None = None
        detail: str | None = None

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            if scope["method"] == "POST":
                refusal = self._check_headers(scope)
                body = b""
                if refusal is None:
                    read = await self._read_body(receive)
                    if read is None:
                        refusal = (413, "too_large", f"body over {self.max_body} bytes")
                    else:
                        body = read
                if refusal is not None:
                    code, outcome, detail = refusal
                    await self._refuse(capture, code, detail)
                    return
                receive = _replay(body, receive)
                if endpoint_source is not None and self.endpoint is not None:
                    response = await self.endpoint(endpoint_source, Request(scope, receive))
                    await response(scope, receive, capture)
                    return
            await self.app(scope, receive, capture)
        finally:
            outcome = state.get("outcome") or outcome or _outcome_for_status(status)
            detail = state.get("detail") or detail
            latency = time.perf_counter() - started
            self.metrics.requests.labels(source=source, outcome=outcome).inc()
            self.metrics.latency.labels(source=source).observe(latency)
            request_log.info(
                "webhook request",
                extra={
                    "source": source,
                    "guid": state.get("guid"),
                    "event_id": state.get("event_id"),
                    "outcome": outcome,
                    "result": state.get("result"),
                    "status": status,
                    "latency_ms": round(latency * 1000, 2),
                    "detail": detail,
                },
            )

    def _check_headers(self, scope: Scope) -> tuple[int, Outcome, str] | None:
        headers = {key.decode("latin-1").lower(): value for key, value in scope.get("headers", [])}
        content_type = headers.get("content-type", b"").decode("latin-1")
        if not _json_media_type(content_type):
            return 415, "unsupported_media_type", "Content-Type must be application/json"
        length = headers.get("content-length")
        if length is not None:
            try:
                too_long = int(length) > self.max_body
            except ValueError:
                return 413, "too_large", "bad Content-Length"
            if too_long:
                return 413, "too_large", f"body over {self.max_body} bytes"
        return None

    async def _read_body(self, receive: Receive) -> bytes | None:
        """The body, or None once it exceeds the limit (having read at most limit + 1 bytes)."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b"".join(chunks)
            chunk = bytes(message.get("body", b""))
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    @staticmethod
    async def _refuse(send: Send, status: int, detail: str) -> None:
        body = json.dumps({"detail": detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _replay(body: bytes, receive: Receive) -> Receive:
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


# -- dependencies -------------------------------------------------------------------------------


MIN_TOKEN_LENGTH = 16


class WebhookTokens:
    """The accepted tokens: ``FILESCAN_WEBHOOK_TOKENS`` plus those in ``FILESCAN_WEBHOOK_TOKENS_FILE``.

    The file is looked at no more than once a second and re-read when its identity (inode, size,
    mtime) changes, so a rotated Secret that the kubelet updates in place takes effect without a
    restart. If it disappears or cannot be read (mid-rotation), the last tokens read stay valid.
    Nothing here ever logs a token.
    """

    CHECK_INTERVAL = 1.0

    def __init__(
        self, inline: list[SecretStr], path: Path | None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._inline = [token.get_secret_value().encode() for token in inline]
        self._path = path
        self._clock = clock
        self._from_file: list[bytes] = []
        self._identity: tuple[int, int, int] | None = None
        self._checked = float("-inf")
        self._refresh()

    def current(self) -> list[bytes]:
        if self._path is not None and self._clock() - self._checked >= self.CHECK_INTERVAL:
            self._refresh()
        return self._inline + self._from_file

    def _refresh(self) -> None:
        self._checked = self._clock()
        if self._path is None:
            return
        try:
            stat = self._path.stat()
            identity = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
            if identity == self._identity:
                return
            text = self._path.read_text()
        except OSError as error:
            log.warning("webhook tokens file unreadable, keeping the last tokens: %s", type(error).__name__)
            return
        values = [v.strip() for v in text.replace("\n", ",").split(",") if v.strip()]
        accepted = [v.encode() for v in values if len(v) >= MIN_TOKEN_LENGTH]
        if len(accepted) < len(values):
            log.warning("webhook tokens file: %d token(s) shorter than %d characters ignored",
                        len(values) - len(accepted), MIN_TOKEN_LENGTH)
        self._identity = identity
        self._from_file = accepted
        log.info("webhook tokens file read: %d token(s)", len(accepted))


class WebhookState:
    """What the routes need, injected by ``create_app`` and reached through ``app.state``."""

    def __init__(self, settings: Settings, kube: KubeClient, metrics: WebhookMetrics, *, auth: bool) -> None:
        self.settings = settings
        self.kube = kube
        self.metrics = metrics
        self.auth = auth
        self.token_source = WebhookTokens(settings.webhook.webhook_tokens, settings.webhook.webhook_tokens_file)

    @property
    def tokens(self) -> list[bytes]:
        return self.token_source.current()


def _webhook_state(request: Request) -> WebhookState:
    state: WebhookState = request.app.state.webhook
    return state


State = Annotated[WebhookState, Depends(_webhook_state)]


def _presented_tokens(request: Request) -> list[str]:
    presented = []
    if token := request.query_params.get("token"):
        presented.append(token)
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        presented.append(credentials.strip())
    if token := request.headers.get("x-webhook-token"):
        presented.append(token)
    return presented


def token_matches(presented: list[str], tokens: list[bytes]) -> bool:
    """Constant-time: every presented value is compared with every token, without stopping early."""
    matched = False
    for value in presented:
        candidate = value.encode()
        for token in tokens:
            matched |= hmac.compare_digest(candidate, token)
    return matched


def _unauthorized(request: Request) -> Response:
    request.state.outcome = "unauthorized"
    return JSONResponse(
        {"detail": "missing or invalid webhook token"}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
    )


# -- the webhook endpoints ----------------------------------------------------------------------


class WebhookAnswer(BaseModel):
    """Comm100's expected answer. ``delay``: the verdict follows through the attachments API."""

    guid: str
    result: Literal["passed", "failed", "delay"]
    message: str = ""


class FieldProblem(BaseModel):
    field: str
    message: str


class Refusal(BaseModel):
    detail: str
    errors: list[FieldProblem] = Field(default_factory=list)


_EXAMPLE_GUID = "12b76589-6ba7-4011-aa23-8779594aab11"


def _examples(source: Source) -> dict[str, Any]:
    owner = {"ticketId": 1042} if source == "ticket" else {"chatId": 88871}
    fields = {
        **owner,
        "guid": _EXAMPLE_GUID,
        "fileName": "invoice.pdf",
        "fileExtension": "pdf",
        "fileSize": 48213,
        "fileURL": f"https://files.comm100.example/{source}/attachments/{_EXAMPLE_GUID}",
        "fileLocalPath": f"/attachments/{_EXAMPLE_GUID}/invoice.pdf",
    }
    return {
        "flat": {
            "summary": "The seed's flat body",
            "value": {"event": "fileUploaded", "eventId": "7f1c0c7e-5bd9-4d2e-9f55-2b1b7f0a4e11", **fields},
        },
        "payload": {
            "summary": "The newer body, fields under payload",
            "value": {
                "event": "fileUploaded",
                "eventId": "7f1c0c7e-5bd9-4d2e-9f55-2b1b7f0a4e11",
                "eventTime": "2025-01-15T09:30:00Z",
                "payload": fields,
            },
        },
    }


def _openapi_extra(source: Source) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": event_json_schema(source), "examples": _examples(source)}
            },
        },
        "parameters": [
            {
                "name": "token",
                "in": "query",
                "required": False,
                "schema": {"type": "string"},
                "description": "Webhook token (or send `Authorization: Bearer …` or `X-Webhook-Token`).",
            }
        ],
    }


_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Stored (or stored already, for a repost); the verdict follows later.",
        "content": {
            "application/json": {
                "example": {"guid": _EXAMPLE_GUID, "result": "delay", "message": "queued for scanning"}
            }
        },
    },
    401: {"description": "No valid token; nothing stored."},
    413: {"description": "Body over 64 KiB; nothing stored."},
    415: {"description": "Content-Type is not JSON; nothing stored."},
    422: {"model": Refusal, "description": "Invalid event or refused fileURL; nothing stored."},
    503: {"description": "Could not be stored now; retry (see Retry-After)."},
}


def _answer_for_verdict(verdict: object) -> Literal["passed", "failed"] | None:
    return {"clean": "passed", "infected": "failed"}.get(str(verdict)) if verdict else None  # type: ignore[return-value]


def _invalid(request: Request, outcome: Outcome, errors: list[FieldError]) -> JSONResponse:
    refusal = Refusal(
        detail="; ".join(str(error) for error in errors),
        errors=[FieldProblem(field=error.location, message=error.message) for error in errors],
    )
    request.state.outcome = outcome
    request.state.detail = refusal.detail
    return JSONResponse(refusal.model_dump(), status_code=422)


async def receive_event(source: Source, request: Request) -> Response:
    """Authenticate, validate, store, answer: the whole of both endpoints.

    Done in one function rather than through FastAPI dependencies: the order matters (no parsing
    before authentication) and this is the hot path, where dependency resolution is measurable.
    """
    state = _webhook_state(request)
    if state.auth and not token_matches(_presented_tokens(request), state.tokens):
        return _unauthorized(request)
    try:
        body = json.loads(await request.body())
    except ValueError as error:
        return _invalid(request, "invalid", [FieldError("body", f"not valid JSON ({type(error).__name__})")])
    try:
        event = parse_event(source, body)
    except EventInvalid as error:
        return _invalid(request, "invalid", error.errors)
    request.state.guid = event.guid
    request.state.event_id = event.event_id
    try:
        check_file_url(event.file_url, state.settings.fetch)
    except URLRefused as error:
        return _invalid(request, "url_refused", [FieldError("fileURL", str(error))])
    return await _store(event, request, state)


async def _store(event: FileUploaded, request: Request, state: WebhookState) -> Response:
    settings = state.settings.webhook
    draft = filescan_draft(event)
    try:
        async with asyncio.timeout(settings.store_timeout_seconds):
            stored = await state.kube.create_filescan(
                settings.namespace, draft.name, draft.spec, labels={"comm100.io/source": event.source}
            )
    except (KubeTransientError, TimeoutError) as error:
        state.metrics.store_errors.labels(kind="transient").inc()
        request.state.outcome = "unavailable"
        request.state.detail = str(error) or "timed out"
        return JSONResponse(
            {"detail": "the event could not be stored now; repost later"},
            status_code=503,
            headers={"Retry-After": str(settings.retry_after_seconds)},
        )
    except KubeInvalid as error:
        # Our models mirror the CRD, so this means they drifted apart: refuse, as the schema did.
        state.metrics.store_errors.labels(kind="invalid").inc()
        log.error("the apiserver refused a FileScan the webhook accepted: %s", error)
        return _invalid(request, "invalid", [FieldError("body", "refused by the FileScan schema")])
    except KubeError as error:
        # 403 (RBAC), 404 (namespace or CRD missing): a deployment problem a human must fix.
        # Still a 5xx, so Comm100 keeps reposting until it is fixed.
        state.metrics.store_errors.labels(kind="permanent").inc()
        log.error("cannot store FileScans: %s", error)
        request.state.outcome = "store_error"
        request.state.detail = str(error)
        return JSONResponse({"detail": "the event could not be stored"}, status_code=500)

    duplicate = isinstance(stored, AlreadyExists)
    request.state.outcome = "duplicate" if duplicate else "created"
    result: Literal["passed", "failed", "delay"] = "delay"
    message = "already received; the verdict follows through the API" if duplicate else "queued for scanning"
    if settings.sync_wait_seconds > 0:
        verdict = await _wait_for_verdict(state, draft.name)
        if verdict is not None:
            result = verdict
            message = "scanned"
    request.state.result = result
    return JSONResponse(WebhookAnswer(guid=event.guid, result=result, message=message).model_dump())


async def _wait_for_verdict(state: WebhookState, name: str) -> Literal["passed", "failed"] | None:
    settings = state.settings.webhook
    try:
        found = await state.kube.wait_for_filescan(
            settings.namespace,
            name,
            lambda obj: bool((obj.get("status") or {}).get("verdict")),
            timeout=settings.sync_wait_seconds,
        )
    except KubeError as error:
        # Stored already: a failed wait only means the verdict comes later, as with ``delay``.
        log.warning("waiting for the verdict of %s failed: %s", name, error)
        return None
    if found is None:
        return None
    return _answer_for_verdict((found.get("status") or {}).get("verdict"))


webhooks = APIRouter(prefix=WEBHOOK_PREFIX, tags=["webhooks"])


@webhooks.post(
    "/ticket",
    response_model=WebhookAnswer,
    responses=_RESPONSES,
    openapi_extra=_openapi_extra("ticket"),
    summary="A file was uploaded to a ticket",
)
async def ticket_file_uploaded(request: Request) -> Response:
    return await receive_event("ticket", request)


@webhooks.post(
    "/livechat",
    response_model=WebhookAnswer,
    responses=_RESPONSES,
    openapi_extra=_openapi_extra("livechat"),
    summary="A file was uploaded to a live chat (or an offline message)",
)
async def livechat_file_uploaded(request: Request) -> Response:
    return await receive_event("livechat", request)


# -- probes and metrics -------------------------------------------------------------------------

probes = APIRouter(tags=["operations"])


@probes.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@probes.get("/readyz", summary="The apiserver is reachable", responses={503: {"description": "It is not."}})
async def readyz(state: State) -> Response:
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS):
            await state.kube.check_ready()
    except (KubeError, TimeoutError) as error:
        return JSONResponse({"status": "unready", "detail": str(error) or "timed out"}, status_code=503)
    return JSONResponse({"status": "ready"})


@probes.get("/metrics", summary="Prometheus metrics")
async def metrics(state: State) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


# -- assembly and process -----------------------------------------------------------------------


def create_app(settings: Settings, kube: KubeClient, *, auth: bool = True) -> FastAPI:
    """The webhook app. ``auth=False`` accepts events without a token (``--insecure-no-auth``)."""
    if auth and not _configured_tokens(settings):
        raise ValueError(
            "no webhook token configured (FILESCAN_WEBHOOK_TOKENS or _FILE); refusing to run without auth"
        )
    app = FastAPI(
        title="filescan webhook",
        version="v1alpha1",
        description="Receives Comm100 fileUploaded events and stores them as FileScans to be virus-scanned.",
    )
    metrics_ = WebhookMetrics()
    app.state.webhook = WebhookState(settings, kube, metrics_, auth=auth)
    app.include_router(webhooks)
    app.include_router(probes)
    app.add_middleware(RequestGate, metrics=metrics_, endpoint=receive_event)
    return app


def _configured_tokens(settings: Settings) -> bool:
    """Whether any token is configured (a tokens file counts even if it is empty right now: a
    Secret being rotated may be momentarily empty, and auth must stay on)."""
    return bool(settings.webhook.webhook_tokens) or settings.webhook.webhook_tokens_file is not None


def _settings_errors(error: ValidationError) -> str:
    # Never the input: it may be a token.
    return "; ".join(
        f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}"
        for item in error.errors(include_input=False, include_url=False)
    )


def main(args: argparse.Namespace) -> int:
    """Run the webhook until SIGTERM; 2 when the configuration is unusable."""
    configure_logging()
    try:
        settings = load_settings()
    except ValidationError as error:
        log.error("invalid settings: %s", _settings_errors(error))
        return 2
    auth = _configured_tokens(settings)
    if not auth and not args.insecure_no_auth:
        log.error(
            "refusing to start: no token in FILESCAN_WEBHOOK_TOKENS or FILESCAN_WEBHOOK_TOKENS_FILE "
            "(--insecure-no-auth for local testing)"
        )
        return 2
    if not auth:
        log.warning("running WITHOUT authentication (--insecure-no-auth): any caller can create FileScans")
    elif args.insecure_no_auth:
        log.warning("--insecure-no-auth ignored: webhook tokens are configured and required")
    try:
        kube = KubeClient.from_environment(
            timeout=settings.webhook.store_timeout_seconds, max_connections=settings.webhook.kube_max_connections
        )
    except Exception as error:
        log.error("no usable Kubernetes credentials (KUBECONFIG or in-cluster): %s", error)
        return 2
    app = create_app(settings, kube, auth=auth)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        access_log=False,
        log_config=None,
        server_header=False,
        proxy_headers=False,
        # Named, not "auto", so the process runs the same wherever it is deployed: uvloop's C
        # transports and TLS, and httptools' parser, cost less CPU per event than asyncio's and h11's.
        loop="uvloop",
        http="httptools",
    )
    server = uvicorn.Server(config)

    async def serve() -> None:
        try:
            await server.serve()
        finally:
            await kube.aclose()

    # server.serve() rather than server.run(): the KubeClient must be closed on the same loop.
    with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
        runner.run(serve())
    return 0 if server.started else 1
