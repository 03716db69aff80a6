"""A small client for clamd's socket protocol: ``VERSION``, ``PING`` and ``INSTREAM``.

Design decisions:

* Blocking sockets with a timeout on every operation, no library: the protocol is four commands
  and ``clamd`` packages on PyPI either read whole files into memory or hide the size-limit reply.
* Commands use the ``z`` (NUL-terminated) form, so a reply is read up to its NUL and nothing is
  guessed from line endings.
* clamd answers an over-long stream early (``INSTREAM size limit exceeded``) and then stops
  reading, so :meth:`InstreamSession.send` checks for an early reply between chunks and, if a send
  fails, still tries to read the reply before calling clamd unavailable. The size limit is its own
  exception so the scanner can report it as a permanent outcome rather than a retryable failure.
* The client returns clamd's verdict as-is (``Heuristics.Limits.Exceeded.*`` included); deciding what
  a verdict means belongs to the scanner.
"""

from __future__ import annotations

import select
import socket
import struct
from dataclasses import dataclass
from types import TracebackType

_MAX_REPLY = 64 * 1024
"""Longest reply accepted from clamd; real replies are one short line."""

_MAX_CHUNK = 0xFFFF_FFFF
"""INSTREAM frames carry a 4-byte length."""


class ClamdError(Exception):
    """clamd could not give a verdict."""


class ClamdUnavailable(ClamdError):
    """clamd could not be reached, or the connection failed mid-way: worth a retry."""


class ClamdStreamTooLong(ClamdError):
    """clamd refused the stream as longer than its ``StreamMaxLength``: retrying cannot help."""


@dataclass(frozen=True)
class ClamdAddress:
    """Where clamd listens: ``tcp://HOST:PORT`` or ``unix:/path`` (``unix:///path`` also accepted)."""

    family: socket.AddressFamily
    target: str | tuple[str, int]

    @classmethod
    def parse(cls, text: str) -> ClamdAddress:
        if text.startswith("unix:"):
            path = text.removeprefix("unix:")
            path = path.removeprefix("//") if path.startswith("///") else path
            if not path.startswith("/"):
                raise ValueError(f"clamd unix address needs an absolute path: {text!r}")
            return cls(socket.AF_UNIX, path)
        if text.startswith("tcp://"):
            host, sep, port = text.removeprefix("tcp://").rstrip("/").rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"clamd tcp address must be tcp://HOST:PORT: {text!r}")
            return cls(socket.AF_INET6 if ":" in host else socket.AF_INET, (host.strip("[]"), int(port)))
        raise ValueError(f"clamd address must start with tcp:// or unix: {text!r}")

    def __str__(self) -> str:
        if isinstance(self.target, str):
            return f"unix:{self.target}"
        host, port = self.target
        return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


@dataclass(frozen=True)
class ScanReply:
    """clamd's answer to a stream: ``signature`` is None when it found nothing."""

    signature: str | None

    @property
    def infected(self) -> bool:
        return self.signature is not None


def parse_scan_reply(reply: str) -> ScanReply:
    """Interpret ``stream: OK``, ``stream: <Name> FOUND`` or an ``... ERROR`` reply."""
    if reply.endswith("ERROR"):
        if "size limit exceeded" in reply:
            raise ClamdStreamTooLong(reply)
        raise ClamdUnavailable(f"clamd reported an error: {reply}")
    _, sep, result = reply.partition(": ")
    if not sep:
        raise ClamdUnavailable(f"unexpected clamd reply: {reply!r}")
    if result == "OK":
        return ScanReply(signature=None)
    if result.endswith(" FOUND"):
        return ScanReply(signature=result.removesuffix(" FOUND"))
    raise ClamdUnavailable(f"unexpected clamd reply: {reply!r}")


class ClamdClient:
    """Talks to one clamd; each call opens its own connection (clamd closes it after a reply)."""

    def __init__(self, address: ClamdAddress, *, connect_timeout: float = 10.0, timeout: float = 120.0):
        self.address = address
        self.connect_timeout = connect_timeout
        """Seconds to wait for the connection to open."""
        self.timeout = timeout
        """Seconds any later send or receive may block (clamd scans the whole stream before replying)."""

    def _connect(self) -> socket.socket:
        sock = socket.socket(self.address.family, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.connect_timeout)
            sock.connect(self.address.target)
            sock.settimeout(self.timeout)
        except OSError as error:
            sock.close()
            raise ClamdUnavailable(f"cannot connect to clamd at {self.address}: {error}") from error
        return sock

    def _command(self, command: bytes) -> str:
        with self._connect() as sock:
            try:
                sock.sendall(b"z" + command + b"\0")
                return _read_reply(sock)
            except OSError as error:
                raise ClamdUnavailable(f"clamd connection failed: {error}") from error

    def ping(self) -> bool:
        """True when clamd answers ``PONG``."""
        return self._command(b"PING") == "PONG"

    def version(self) -> str:
        """``ClamAV <engine>[/<db version>/<db date>]``."""
        return self._command(b"VERSION")

    def instream(self) -> InstreamSession:
        """Open an INSTREAM session: send chunks, then :meth:`InstreamSession.finish` for the verdict."""
        sock = self._connect()
        try:
            sock.sendall(b"zINSTREAM\0")
        except OSError as error:
            sock.close()
            raise ClamdUnavailable(f"clamd connection failed: {error}") from error
        return InstreamSession(sock)


class InstreamSession:
    """One INSTREAM upload. Closing it without :meth:`finish` abandons the scan."""

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self._early_reply: str | None = None

    def send(self, chunk: bytes) -> None:
        """Send one chunk; raises :class:`ClamdStreamTooLong` as soon as clamd refuses the stream."""
        if not chunk:
            return  # a zero-length frame would end the stream
        if len(chunk) > _MAX_CHUNK:
            raise ValueError("chunk too large for one INSTREAM frame")
        try:
            self._sock.sendall(struct.pack(">I", len(chunk)) + chunk)
        except OSError as error:
            self._raise_after_send_failure(error)
        readable, _, _ = select.select([self._sock], [], [], 0)
        if readable:
            # clamd only speaks early to refuse the stream; read why and stop.
            self._raise_for_reply(self._read_reply_or_unavailable())

    def finish(self) -> ScanReply:
        """End the stream and wait for the verdict."""
        try:
            self._sock.sendall(struct.pack(">I", 0))
        except OSError as error:
            self._raise_after_send_failure(error)
        return parse_scan_reply(self._read_reply_or_unavailable())

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> InstreamSession:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _read_reply_or_unavailable(self) -> str:
        try:
            return _read_reply(self._sock)
        except OSError as error:
            raise ClamdUnavailable(f"clamd connection failed: {error}") from error

    def _raise_after_send_failure(self, error: OSError) -> None:
        # clamd closes the connection right after refusing an over-long stream; its reply may
        # still be waiting in our receive buffer.
        try:
            self._sock.settimeout(1.0)
            reply = _read_reply(self._sock)
        except (OSError, ClamdUnavailable):
            raise ClamdUnavailable(f"clamd connection failed: {error}") from error
        self._raise_for_reply(reply)
        raise ClamdUnavailable(f"clamd connection failed: {error}") from error

    @staticmethod
    def _raise_for_reply(reply: str) -> None:
        parse_scan_reply(reply)  # raises for the size limit and for errors
        raise ClamdUnavailable(f"clamd answered before the stream ended: {reply!r}")


def _read_reply(sock: socket.socket) -> str:
    data = bytearray()
    while not data.endswith(b"\0"):
        piece = sock.recv(4096)
        if not piece:
            if data:
                break  # some clamd versions close without the NUL
            raise ClamdUnavailable("clamd closed the connection without a reply")
        data += piece
        if len(data) > _MAX_REPLY:
            raise ClamdUnavailable("clamd reply too long")
    return data.rstrip(b"\0\n").decode("utf-8", errors="replace")
