"""A small keep-alive HTTP/1.1 client for unary calls: one write per request, a C parser per answer.

Design decisions:

* It exists for the webhook's hot path, one FileScan create per event, where httpx, httpcore and
  anyio cost most of the process's CPU (about 60 % of it, profiled under load). Here a request is
  a single ``transport.write`` of its head and body (one TLS record, one syscall), the answer is
  parsed by httptools (llhttp, the parser uvicorn uses), and a connection is an asyncio protocol,
  so an idle connection that the server closed is known closed from ``connection_lost``, without
  probing the socket before each use.
* Only what the Kubernetes API's unary calls need: a complete body, answers read whole
  (``Content-Length`` or chunked), no redirects, proxies, compression or cookies. Streaming (watches)
  and proxied setups stay with httpx (see :mod:`controller.kube`).
* A connection whose exchange did not end cleanly (a timeout, a cancellation, an error, an answer
  that says ``Connection: close``) is closed, never reused, so a late answer can never be read as the
  answer to the next request. Nothing is retried here: the caller decides what a failure means.
* There is no timeout of its own beyond the connect timeout: the caller bounds the whole call
  (``asyncio.timeout``), which closes the connection it was using.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, cast
from urllib.parse import urlsplit

import httptools

_DEFAULT_PORTS: Final = {"https": 443, "http": 80}


class HTTPError(Exception):
    """No usable answer: the connection closed early, the answer was not HTTP/1.1, or the request
    could not be written (a header with a line break)."""


@dataclass(frozen=True)
class Answer:
    """A whole answer: its status and its body (decoded from chunked, if it was)."""

    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class _Connection(asyncio.Protocol):
    """One connection; one exchange at a time (the pool hands it to one caller at a time)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._answer: asyncio.Future[Answer] | None = None
        self._body: list[bytes] = []
        self.closed = False
        self.reusable = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, but have its methods.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._answer is None or self._answer.done():
            # Bytes nobody asked for: this connection's stream can no longer be trusted.
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(HTTPError(f"malformed answer: {error}"))
            self.close()

    def eof_received(self) -> bool | None:
        self._fail(HTTPError("the server closed the connection before answering"))
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(exc if exc is not None else HTTPError("the server closed the connection before answering"))

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.reusable = self._parser.should_keep_alive()
        if self._answer is not None and not self._answer.done():
            self._answer.set_result(Answer(self._parser.get_status_code(), b"".join(self._body)))

    # the pool's side
    async def exchange(self, request: bytes) -> Answer:
        if self._transport is None or self.closed:
            raise HTTPError("the connection is closed")
        self._answer = self._loop.create_future()
        self._body = []
        self.reusable = False
        self._transport.write(request)
        return await self._answer

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    def _fail(self, error: BaseException) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(error)


class ConnectionPool:
    """Keep-alive connections to one server (``url``: scheme, host, port and an optional path prefix).

    ``headers`` go with every request. Connections are opened as needed and kept while idle; the
    caller limits how many requests run at once (and so how many connections there are).
    """

    def __init__(
        self,
        url: str,
        *,
        ssl_context: ssl.SSLContext | None,
        connect_timeout: float,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"not an http(s) URL with a host: {url!r}")
        self._tls = ssl_context if parts.scheme == "https" else None
        if parts.scheme == "https" and self._tls is None:
            self._tls = ssl.create_default_context()
        self._host = parts.hostname
        self._port = parts.port or _DEFAULT_PORTS[parts.scheme]
        self._prefix = parts.path.rstrip("/")
        host = f"[{self._host}]" if ":" in self._host else self._host
        host_header = host if parts.port is None else f"{host}:{parts.port}"
        self._fixed = _header_lines([("Host", host_header), *headers])
        self._connect_timeout = connect_timeout
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()

    async def request(
        self, method: str, target: str, *, headers: Iterable[tuple[str, str]] = (), body: bytes | None = None
    ) -> Answer:
        """Send one request (``target``: path and query, below the URL's path) and read its answer.

        Raises :class:`HTTPError` or :class:`OSError` (refused, reset, TLS) when no answer came.
        """
        head = f"{method} {self._prefix}{target} HTTP/1.1\r\n{self._fixed}{_header_lines(headers)}"
        if body is not None:
            head += f"Content-Length: {len(body)}\r\n"
        request = (head + "\r\n").encode("latin-1") + (body or b"")
        connection = self._idle_connection() or await self._connect()
        answer: Answer | None = None
        try:
            answer = await connection.exchange(request)
            return answer
        finally:
            if answer is not None and connection.reusable and not connection.closed:
                self._idle.append(connection)
            else:
                connection.close()
                self._open.discard(connection)

    async def aclose(self) -> None:
        for connection in self._open:
            connection.close()
        self._open.clear()
        self._idle.clear()

    def _idle_connection(self) -> _Connection | None:
        while self._idle:
            connection = self._idle.pop()  # the most recently used: the least likely to be closed
            if not connection.closed:
                return connection
            self._open.discard(connection)
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._connect_timeout):
            _, connection = await loop.create_connection(
                lambda: _Connection(loop),
                self._host,
                self._port,
                ssl=self._tls,
                server_hostname=self._host if self._tls is not None else None,
            )
        self._open.add(connection)
        return connection


def _header_lines(headers: Iterable[tuple[str, str]]) -> str:
    lines = []
    for name, value in headers:
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
            raise HTTPError(f"invalid header {name!r}")
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines)
