"""A stand-in for Comm100's attachment API and its file server, for tests and the demo.

What it does: answers ``PUT`` and ``DELETE /api/v2/{livechat|ticket}/attachments/{guid}`` behind
bearer auth, serves registered files under ``/files/<name>`` (the ``fileURL`` of an event), records
every API call and every file fetch, and misbehaves on request.

Design decisions:

* The standard library's threaded HTTP server, not an ASGI stack: faults such as dropping a
  connection without an answer, stalling mid-body, chunked bodies and a lying ``Content-Length``
  need control of the raw socket, and a thread per connection makes a stall cost nothing to others.
  It speaks HTTP/1.1 and binds 127.0.0.1 only, on a free port unless told otherwise.
* It knows nothing of any operator: it is Comm100 as its API reference describes it. Any guid is
  accepted; a PUT must carry one of the three status vocabularies (``status``: available|unavailable,
  ``status``: passed|failed, or ``isAvailable``: bool), optionally restricted to some; a deleted
  attachment answers 404 afterwards, as a real one would.
* Faults are rules matched in order against each API call (optionally by method, source or guid),
  each used up after ``times`` matches (``None``: until cleared). They apply before authentication,
  as a load balancer's errors would. Kinds: ``status`` (answer that code, with ``Retry-After`` if
  given), ``stall`` (wait, then answer normally: the client has usually given up by then, which is
  the ambiguous case a real timeout creates), ``drop`` (close the connection without an answer;
  ``times=None`` is "down").
* Two ways to drive it, the same state behind both: in-process (:class:`Comm100Simulator`) and over
  HTTP under ``/_sim/`` (:class:`RemoteSimulator` wraps that), so a standalone simulator started by
  ``python -m devstack.comm100sim`` can be used by the demo and other processes. With
  ``--state-file`` it also writes its URL and everything it recorded to a JSON file after each call.
* Stalls wait on the server's stop event, so :meth:`Comm100Simulator.stop` never hangs on them.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import hmac
import json
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Literal, cast
from urllib.parse import quote, unquote, urlsplit

import httpx

__all__ = ["Call", "Comm100Simulator", "Fault", "Fetch", "RemoteSimulator", "SimFile", "main"]

StatusStyle = Literal["available", "passed", "isAvailable"]
FaultKind = Literal["status", "stall", "drop"]
_API_PATH = re.compile(r"^/api/v2/(livechat|ticket)/attachments/([^/]+)$")
_STATUS_WORDS: dict[str, StatusStyle] = {
    "available": "available",
    "unavailable": "available",
    "passed": "passed",
    "failed": "passed",
}
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Call:
    """One request to the attachment API, as received and as answered."""

    time: float
    """Wall-clock seconds (``time.time()``) when the request arrived."""
    method: str
    path: str
    source: str
    guid: str
    body: Any
    """The parsed JSON body; the raw text when it was not JSON; ``None`` when empty."""
    auth_ok: bool
    status: int
    """The status answered; 0 when the connection was dropped without an answer."""
    fault: str | None = None
    """The kind of injected fault that shaped the answer, if any."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Fetch:
    """One request for a served file."""

    time: float
    method: str
    name: str
    status: int
    bytes_sent: int
    fault: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Fault:
    """A rule that changes the answer of the next matching API calls."""

    kind: FaultKind = "status"
    status: int = 503
    """For ``status``: the code answered."""
    retry_after: str | None = None
    """For ``status``: the ``Retry-After`` header sent verbatim (seconds, or an HTTP-date)."""
    seconds: float = 0.0
    """For ``stall``: how long to wait before answering."""
    times: int | None = 1
    """How many matching calls it applies to; ``None`` until cleared."""
    method: str | None = None
    source: str | None = None
    guid: str | None = None
    body: str = '{"error": "injected fault"}'
    """For ``status``: the body answered."""

    def matches(self, method: str, source: str, guid: str) -> bool:
        return (
            (self.method is None or self.method.upper() == method)
            and (self.source is None or self.source == source)
            and (self.guid is None or self.guid.lower() == guid.lower())
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class SimFile:
    """A file served at ``/files/<name>``, and how to misbehave when serving it."""

    data: bytes | None = None
    path: Path | None = None
    """Served from disk (streamed) when ``data`` is ``None``."""
    content_type: str = "application/octet-stream"
    chunked: bool = False
    """Send ``Transfer-Encoding: chunked`` and no ``Content-Length``."""
    status: int | None = None
    """Answer this error code instead of the file (e.g. 404, 500)."""
    stall_seconds: float = 0.0
    stall_after: int = 0
    """Stall after sending this many body bytes (0: before the headers)."""
    redirect_to: str | None = None
    """Answer 302 with this ``Location``."""
    content_length: int | None = None
    """A ``Content-Length`` to claim instead of the true one (the true bytes are sent, then the
    connection is closed)."""

    def size(self) -> int:
        if self.data is not None:
            return len(self.data)
        return self.path.stat().st_size if self.path else 0

    def chunks(self) -> Iterator[bytes]:
        if self.data is not None:
            for start in range(0, len(self.data), _CHUNK):
                yield self.data[start : start + _CHUNK]
        elif self.path is not None:
            with self.path.open("rb") as handle:
                while chunk := handle.read(_CHUNK):
                    yield chunk


class _State:
    """Everything the simulator knows; every access under one lock."""

    def __init__(self, tokens: Iterable[str], styles: Iterable[StatusStyle] | None) -> None:
        self.lock = threading.Lock()
        self.tokens: list[str] = list(tokens)
        self.styles: set[StatusStyle] | None = set(styles) if styles is not None else None
        self.calls: list[Call] = []
        self.fetches: list[Fetch] = []
        self.faults: list[Fault] = []
        self.files: dict[str, SimFile] = {}
        self.attachments: dict[tuple[str, str], dict[str, Any]] = {}

    def take_fault(self, method: str, source: str, guid: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.matches(method, source, guid):
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times <= 0:
                            self.faults.remove(fault)
                    return fault
        return None

    def token_ok(self, header: str | None) -> bool:
        if not header or not header.startswith("Bearer "):
            return False
        offered = header.removeprefix("Bearer ").strip().encode()
        with self.lock:
            tokens = list(self.tokens)
        # Check every token, so timing says nothing about which one nearly matched.
        return any([hmac.compare_digest(offered, token.encode()) for token in tokens])

    def reset(self) -> None:
        with self.lock:
            self.calls.clear()
            self.fetches.clear()
            self.faults.clear()
            self.files.clear()
            self.attachments.clear()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, sim: Comm100Simulator) -> None:
        self.sim = sim
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", port), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that went away mid-answer is an expected event here, not a traceback

    def close_connections(self) -> None:
        """End kept-alive connections too, so a stopped simulator answers nobody."""
        with self.connections_lock:
            for connection in self.connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60  # idle keep-alive connections end, so their threads do too
    server: _Server

    # -- plumbing --------------------------------------------------------------------------

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:  # the stdlib's parameter name
        pass  # calls are recorded; a line per request would only be noise in test output

    @property
    def sim(self) -> Comm100Simulator:
        return self.server.sim

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        payload = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        self.send_response(status)
        if payload:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if payload and self.command != "HEAD":
            self.wfile.write(payload)

    def _dispatch(self) -> None:
        path = urlsplit(self.path).path
        if path.startswith("/_sim/"):
            self._control(path.removeprefix("/_sim/"))
        elif match := _API_PATH.match(path):
            self._api(match.group(1), unquote(match.group(2)))
        elif path.startswith("/files/") and self.command in ("GET", "HEAD"):
            self._file(unquote(path.removeprefix("/files/")))
        else:
            self._read_body()
            self._send(404, {"error": "no such endpoint"})

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _dispatch

    # -- the attachment API ----------------------------------------------------------------

    def _api(self, source: str, guid: str) -> None:
        state = self.sim.state
        raw = self._read_body()
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
        auth_ok = state.token_ok(self.headers.get("Authorization"))
        method = self.command
        fault = state.take_fault(method, source, guid)

        def record(status: int) -> None:
            call = Call(
                time.time(),
                method,
                urlsplit(self.path).path,
                source,
                guid,
                body,
                auth_ok,
                status,
                fault.kind if fault else None,
            )
            self.sim._record(call)

        if fault and fault.kind == "drop":
            record(0)
            self.close_connection = True
            return
        if fault and fault.kind == "status":
            record(fault.status)
            headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else None
            self._send(fault.status, fault.body.encode(), headers)
            return
        if fault and fault.kind == "stall":
            self.sim.stopping.wait(fault.seconds)
        status, answer = self._apply(method, source, guid, body, auth_ok)
        record(status)
        self._send(status, answer)

    def _apply(self, method: str, source: str, guid: str, body: Any, auth_ok: bool) -> tuple[int, Any]:
        state = self.sim.state
        if not auth_ok:
            return 401, {"error": "invalid or missing bearer token"}
        if method not in ("PUT", "DELETE"):
            return 405, {"error": "method not allowed"}
        key = (source, guid.lower())
        with state.lock:
            current = state.attachments.get(key)
            if current is not None and current.get("deleted"):
                return 404, {"error": "attachment not found"}
            if method == "DELETE":
                state.attachments[key] = {"guid": guid, "source": source, "deleted": True}
                return 204, None
            style, fields = _parse_status(body)
            if style is None or (state.styles is not None and style not in state.styles):
                return 400, {"error": "expected status (available|unavailable|passed|failed) or isAvailable"}
            attachment = {"guid": guid, "source": source, "deleted": False, **fields}
            state.attachments[key] = attachment
            return 200, attachment

    # -- files -----------------------------------------------------------------------------

    def _file(self, name: str) -> None:
        with self.sim.state.lock:
            served = self.sim.state.files.get(name)
        sent = 0

        def record(status: int, fault: str | None = None) -> None:
            self.sim._record_fetch(Fetch(time.time(), self.command, name, status, sent, fault))

        if served is None:
            record(404)
            self._send(404, {"error": "no such file"})
            return
        stopping = self.sim.stopping
        if served.stall_seconds and served.stall_after <= 0:
            stopping.wait(served.stall_seconds)
        if served.status is not None:
            record(served.status, "status")
            self._send(served.status, {"error": "injected fault"})
            return
        if served.redirect_to is not None:
            record(302, "redirect")
            self._send(302, None, {"Location": served.redirect_to})
            return
        self.send_response(200)
        self.send_header("Content-Type", served.content_type)
        fault: str | None = None
        if served.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            declared = served.size() if served.content_length is None else served.content_length
            self.send_header("Content-Length", str(declared))
            if served.content_length is not None:
                fault, self.close_connection = "content_length", True
                self.send_header("Connection", "close")
        self.end_headers()
        if self.command == "HEAD":
            record(200, fault)
            return
        stalled = not (served.stall_seconds and served.stall_after > 0)
        try:
            for chunk in served.chunks():
                if not stalled and sent + len(chunk) >= served.stall_after:
                    head = served.stall_after - sent
                    self._write(chunk[:head], served.chunked)
                    sent += head
                    self.wfile.flush()
                    stopping.wait(served.stall_seconds)
                    stalled, chunk = True, chunk[head:]
                self._write(chunk, served.chunked)
                sent += len(chunk)
            if served.chunked:
                self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            fault = fault or "client_gone"
        record(200, fault or ("stall" if served.stall_seconds else None))

    def _write(self, chunk: bytes, chunked: bool) -> None:
        if not chunk:
            return
        if chunked:
            self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        else:
            self.wfile.write(chunk)

    # -- control ---------------------------------------------------------------------------

    def _control(self, what: str) -> None:
        sim = self.sim
        raw = self._read_body()
        try:
            data: Any = json.loads(raw) if raw else {}
        except ValueError:
            self._send(400, {"error": "expected a JSON body"})
            return
        route = (self.command, what.rstrip("/"))
        try:
            if route == ("GET", "health"):
                self._send(200, {"ok": True})
            elif route == ("GET", "calls"):
                self._send(200, {"calls": [call.to_dict() for call in sim.calls()]})
            elif route == ("GET", "fetches"):
                self._send(200, {"fetches": [fetch.to_dict() for fetch in sim.fetches()]})
            elif route == ("GET", "attachments"):
                self._send(200, {"attachments": sim.attachments()})
            elif route == ("POST", "faults"):
                self._send(201, sim.inject(**data).to_dict())
            elif route == ("DELETE", "faults"):
                sim.clear_faults()
                self._send(204)
            elif route == ("POST", "files"):
                self._send(201, {"url": sim.add_file(**_file_args(data))})
            elif route == ("POST", "tokens"):
                sim.set_tokens(*data.get("tokens", []))
                self._send(204)
            elif route == ("POST", "reset"):
                sim.reset()
                self._send(204)
            else:
                self._send(404, {"error": f"no control endpoint {self.command} /_sim/{what}"})
        except (TypeError, ValueError) as exc:
            self._send(400, {"error": str(exc)})


def _parse_status(body: Any) -> tuple[StatusStyle | None, dict[str, Any]]:
    if not isinstance(body, dict):
        return None, {}
    if isinstance(body.get("isAvailable"), bool):
        return "isAvailable", {"isAvailable": body["isAvailable"]}
    status = body.get("status")
    if isinstance(status, str) and status in _STATUS_WORDS:
        return _STATUS_WORDS[status], {"status": status}
    return None, {}


def _file_args(data: dict[str, Any]) -> dict[str, Any]:
    """The JSON form of :meth:`Comm100Simulator.add_file`: ``base64`` or ``text`` for the bytes."""
    args = dict(data)
    if "base64" in args:
        args["data"] = base64.b64decode(args.pop("base64"))
    elif "text" in args:
        args["data"] = str(args.pop("text")).encode()
    return args


class Comm100Simulator:
    """The simulator, controlled in-process. ``with Comm100Simulator(token="t") as sim: ...``"""

    def __init__(
        self,
        token: str | Iterable[str] = (),
        *,
        port: int = 0,
        state_file: Path | None = None,
        styles: Iterable[StatusStyle] | None = None,
    ) -> None:
        """``token``: the bearer token(s) accepted; ``port``: 0 picks a free one; ``state_file``:
        where to write the URL and records as JSON; ``styles``: the PUT vocabularies accepted
        (all three when ``None``)."""
        self.state = _State([token] if isinstance(token, str) else token, styles)
        self.stopping = threading.Event()
        self._port = port
        self._state_file = state_file
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Comm100Simulator:
        if self._server is not None:
            raise RuntimeError("the simulator is already running")
        self.stopping.clear()
        self._server = _Server(self._port, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="comm100sim", daemon=True
        )
        self._thread.start()
        self._write_state()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        self.stopping.set()
        server.shutdown()
        server.close_connections()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> Comm100Simulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the simulator is not running")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:41234`` (no trailing slash)."""
        return f"http://127.0.0.1:{self.port}"

    # -- records ---------------------------------------------------------------------------

    def calls(
        self, *, method: str | None = None, source: str | None = None, guid: str | None = None
    ) -> list[Call]:
        """API calls received so far, oldest first, optionally filtered."""
        with self.state.lock:
            calls = list(self.state.calls)
        return [
            c
            for c in calls
            if (method is None or c.method == method.upper())
            and (source is None or c.source == source)
            and (guid is None or c.guid.lower() == guid.lower())
        ]

    def fetches(self, name: str | None = None) -> list[Fetch]:
        with self.state.lock:
            return [f for f in self.state.fetches if name is None or f.name == name]

    def attachments(self) -> dict[str, dict[str, Any]]:
        """The last accepted state of each attachment, keyed ``source/guid`` (guid lowercased)."""
        with self.state.lock:
            items = self.state.attachments.items()
            return {f"{source}/{guid}": dict(value) for (source, guid), value in items}

    # -- control ---------------------------------------------------------------------------

    def inject(
        self,
        kind: FaultKind = "status",
        *,
        status: int = 503,
        times: int | None = 1,
        retry_after: str | float | None = None,
        seconds: float = 0.0,
        method: str | None = None,
        source: str | None = None,
        guid: str | None = None,
        body: str = '{"error": "injected fault"}',
    ) -> Fault:
        """Add a fault rule (see :class:`Fault`); rules are tried in the order added."""
        if kind not in ("status", "stall", "drop"):
            raise ValueError(f"unknown fault kind {kind!r}; expected status, stall or drop")
        if times is not None and times < 1:
            raise ValueError("times must be at least 1, or None for 'until cleared'")
        fault = Fault(
            kind=kind,
            status=int(status),
            times=times,
            seconds=float(seconds),
            retry_after=None if retry_after is None else _header_value(retry_after),
            method=method,
            source=source,
            guid=guid,
            body=body,
        )
        with self.state.lock:
            self.state.faults.append(fault)
        return fault

    def down(self) -> Fault:
        """Drop every API call without an answer until :meth:`clear_faults` or :meth:`reset`."""
        return self.inject("drop", times=None)

    def clear_faults(self) -> None:
        with self.state.lock:
            self.state.faults.clear()

    def add_file(
        self,
        name: str,
        data: bytes | str | None = None,
        *,
        path: Path | str | None = None,
        content_type: str = "application/octet-stream",
        chunked: bool = False,
        status: int | None = None,
        stall_seconds: float = 0.0,
        stall_after: int = 0,
        redirect_to: str | None = None,
        content_length: int | None = None,
    ) -> str:
        """Serve ``data`` (or the file at ``path``) at ``/files/<name>``; return its URL."""
        if (data is None) == (path is None) and status is None and redirect_to is None:
            raise ValueError("give exactly one of data or path")
        served = SimFile(
            data=data.encode() if isinstance(data, str) else data,
            path=Path(path) if path is not None else None,
            content_type=content_type,
            chunked=chunked,
            status=status,
            stall_seconds=float(stall_seconds),
            stall_after=int(stall_after),
            redirect_to=redirect_to,
            content_length=content_length,
        )
        with self.state.lock:
            self.state.files[name] = served
        return self.file_url(name)

    def file_url(self, name: str) -> str:
        return f"{self.url}/files/{quote(name)}"

    def set_tokens(self, *tokens: str) -> None:
        """Replace the accepted bearer tokens (several at once, for a rotation)."""
        with self.state.lock:
            self.state.tokens = list(tokens)

    def reset(self) -> None:
        """Forget calls, fetches, faults, files and attachment states (tokens stay)."""
        self.state.reset()
        self._write_state()

    # -- internals -------------------------------------------------------------------------

    def _record(self, call: Call) -> None:
        with self.state.lock:
            self.state.calls.append(call)
        self._write_state()

    def _record_fetch(self, fetch: Fetch) -> None:
        with self.state.lock:
            self.state.fetches.append(fetch)
        self._write_state()

    def _write_state(self) -> None:
        if self._state_file is None or self._server is None:
            return
        with self.state.lock:
            snapshot = {
                "url": self.url,
                "pid": os.getpid(),
                "calls": [c.to_dict() for c in self.state.calls],
                "fetches": [f.to_dict() for f in self.state.fetches],
            }
            temporary = self._state_file.with_name(f".{self._state_file.name}.{threading.get_ident()}")
            temporary.write_text(json.dumps(snapshot, indent=1))
            temporary.replace(self._state_file)


def _header_value(value: str | float) -> str:
    return f"{value:g}" if isinstance(value, int | float) else str(value)


class RemoteSimulator:
    """Drive a simulator in another process over its ``/_sim/`` endpoints."""

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RemoteSimulator:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _json(self, method: str, path: str, body: Any = None) -> Any:
        response = self._http.request(method, f"/_sim/{path}", json=body)
        response.raise_for_status()
        return response.json() if response.content else None

    def calls(self) -> list[Call]:
        return [Call(**c) for c in self._json("GET", "calls")["calls"]]

    def fetches(self) -> list[Fetch]:
        return [Fetch(**f) for f in self._json("GET", "fetches")["fetches"]]

    def attachments(self) -> dict[str, dict[str, Any]]:
        return cast(dict[str, dict[str, Any]], self._json("GET", "attachments")["attachments"])

    def inject(self, kind: FaultKind = "status", **options: Any) -> dict[str, Any]:
        return cast(dict[str, Any], self._json("POST", "faults", {"kind": kind, **options}))

    def clear_faults(self) -> None:
        self._json("DELETE", "faults")

    def add_file(self, name: str, data: bytes | None = None, **options: Any) -> str:
        body = {"name": name, **options}
        if data is not None:
            body["base64"] = base64.b64encode(data).decode()
        return str(self._json("POST", "files", body)["url"])

    def set_tokens(self, *tokens: str) -> None:
        self._json("POST", "tokens", {"tokens": list(tokens)})

    def reset(self) -> None:
        self._json("POST", "reset")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.comm100sim", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--token", action="append", default=[], help="accepted bearer token (repeatable)")
    parser.add_argument("--state-file", type=Path, help="write the URL and all records here as JSON")
    parser.add_argument(
        "--style",
        action="append",
        choices=["available", "passed", "isAvailable"],
        help="accept only these PUT vocabularies (repeatable; default: all)",
    )
    args = parser.parse_args(argv)
    tokens = args.token or [t for t in os.environ.get("COMM100SIM_TOKENS", "").split(",") if t]
    if not tokens:
        parser.error("give at least one --token (or COMM100SIM_TOKENS)")
    done = threading.Event()

    def finish(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, finish)
    signal.signal(signal.SIGINT, finish)
    with Comm100Simulator(tokens, port=args.port, state_file=args.state_file, styles=args.style) as sim:
        print(sim.url, flush=True)
        done.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
