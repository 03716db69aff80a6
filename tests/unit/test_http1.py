"""controller.http1 against a scripted local HTTP/1.1 server: answers, reuse, and what is never reused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest

from controller.http1 import ConnectionPool, HTTPError

Reply = Callable[[bytes], bytes | None]
"""Given a request's head (up to and with the blank line), the bytes to answer; None closes."""


@dataclass
class Server:
    url: str
    heads: list[bytes] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    connections: int = 0


def _answer(body: bytes, status: str = "200 OK", extra: str = "") -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


@asynccontextmanager
async def serving(
    reply: Reply, *, prefix: str = "", delay: float = 0.0, close_after_answer: bool = False
) -> AsyncIterator[Server]:
    server = Server(url="")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                     if line.lower().startswith(b"content-length:")),
                    0,
                )
                server.heads.append(head)
                server.bodies.append(await reader.readexactly(length))
                if delay:
                    await asyncio.sleep(delay)
                answer = reply(head)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                if close_after_answer:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    listener = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    server.url = f"http://127.0.0.1:{port}{prefix}"
    async with listener:
        yield server


def _pool(url: str) -> ConnectionPool:
    return ConnectionPool(url, ssl_context=None, connect_timeout=2.0, headers=[("Accept", "application/json")])


async def test_an_answer_with_a_length_and_the_connection_kept_for_the_next_request() -> None:
    async with serving(lambda head: _answer(b'{"kind": "FileScan"}', "201 Created")) as server:
        pool = _pool(server.url + "/prefix/")
        first = await pool.request("POST", "/apis/x?a=1", headers=[("Content-Type", "application/json")], body=b"{}")
        second = await pool.request("GET", "/readyz")
        await pool.aclose()
    assert (first.status, first.json()) == (201, {"kind": "FileScan"})
    assert second.status == 201
    assert server.connections == 1, "the second request reused the first one's connection"
    post, get = server.heads
    assert post.startswith(b"POST /prefix/apis/x?a=1 HTTP/1.1\r\n")
    assert b"\r\nHost: 127.0.0.1:" in post and b"\r\nAccept: application/json\r\n" in post
    assert b"\r\nContent-Length: 2\r\n" in post and server.bodies[0] == b"{}"
    assert get.startswith(b"GET /prefix/readyz HTTP/1.1\r\n") and b"Content-Length" not in get


async def test_a_chunked_answer_is_decoded() -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    async with serving(lambda head: chunked) as server:
        pool = _pool(server.url)
        answer = await pool.request("GET", "/x")
        again = await pool.request("GET", "/x")
        await pool.aclose()
    assert answer.body == again.body == b"hello world"
    assert server.connections == 1


async def test_connection_close_is_honoured() -> None:
    async with serving(lambda head: _answer(b"{}", extra="Connection: close\r\n")) as server:
        pool = _pool(server.url)
        await pool.request("GET", "/x")
        await pool.request("GET", "/x")
        await pool.aclose()
    assert server.connections == 2


async def test_a_connection_the_server_closed_while_idle_is_not_used_again() -> None:
    async with serving(lambda head: _answer(b"{}"), close_after_answer=True) as server:
        pool = _pool(server.url)
        await pool.request("GET", "/x")
        await asyncio.sleep(0.1)  # the server's close reaches the idle connection
        answer = await pool.request("GET", "/x")
        await pool.aclose()
    assert answer.status == 200
    assert server.connections == 2


async def test_a_request_the_server_closes_on_is_an_error_and_the_next_one_gets_a_new_connection() -> None:
    answers = iter([_answer(b"{}"), None])
    async with serving(lambda head: next(answers, _answer(b"{}"))) as server:
        pool = _pool(server.url)
        await pool.request("GET", "/x")
        with pytest.raises(HTTPError):
            await pool.request("GET", "/x")
        answer = await pool.request("GET", "/x")
        await pool.aclose()
    assert answer.status == 200
    assert server.connections == 2


async def test_closed_before_answering_is_an_error() -> None:
    async with serving(lambda head: None) as server:
        pool = _pool(server.url)
        with pytest.raises(HTTPError, match="closed the connection"):
            await pool.request("GET", "/x")
        await pool.aclose()


async def test_a_garbled_answer_is_an_error() -> None:
    async with serving(lambda head: b"SMTP ready\r\n\r\n") as server:
        pool = _pool(server.url)
        with pytest.raises(HTTPError, match="malformed"):
            await pool.request("GET", "/x")
        await pool.aclose()


async def test_a_cancelled_exchange_never_lends_its_late_answer_to_the_next_request() -> None:
    count = iter(range(100))
    async with serving(lambda head: _answer(str(next(count)).encode()), delay=0.2) as server:
        pool = _pool(server.url)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await pool.request("GET", "/slow")
        answer = await pool.request("GET", "/x")
        await pool.aclose()
    assert answer.body == b"1", "the second request got its own answer, not the first one's"
    assert server.connections == 2


async def test_a_header_with_a_line_break_is_refused() -> None:
    pool = _pool("http://127.0.0.1:9")
    with pytest.raises(HTTPError, match="invalid header"):
        await pool.request("GET", "/x", headers=[("Authorization", "Bearer x\r\nX-Injected: 1")])


async def test_nothing_listening_is_an_os_error() -> None:
    pool = _pool("http://127.0.0.1:9")
    with pytest.raises(OSError):
        await pool.request("GET", "/x")


def test_only_http_urls_with_a_host() -> None:
    with pytest.raises(ValueError, match="not an http"):
        _pool("ftp://example.test/")
