"""The clamd client's address parsing, and its session against a real clamd."""

from __future__ import annotations

import socket
import threading

import pytest

from controller.clamav import ClamdAddress, ClamdClient, InstreamSession
from devstack.clamd import ClamdProcess
from tests.fixtures.clamd import TEST_MARKER


@pytest.mark.parametrize(
    ("text", "family", "target"),
    [
        ("tcp://clamd:3310", socket.AF_INET, ("clamd", 3310)),
        ("tcp://clamd.filescan.svc.cluster.local:3310/", socket.AF_INET, ("clamd.filescan.svc.cluster.local", 3310)),
        ("tcp://[::1]:3310", socket.AF_INET6, ("::1", 3310)),
        ("unix:/run/clamd.sock", socket.AF_UNIX, "/run/clamd.sock"),
        ("unix:///run/clamd.sock", socket.AF_UNIX, "/run/clamd.sock"),
    ],
)
def test_address_forms(text: str, family: socket.AddressFamily, target: object) -> None:
    address = ClamdAddress.parse(text)

    assert (address.family, address.target) == (family, target)


@pytest.mark.parametrize(
    "text", ["clamd:3310", "tcp://clamd", "tcp://clamd:0", "tcp://:3310", "unix:relative.sock", "http://x:1"]
)
def test_bad_addresses_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="clamd"):
        ClamdAddress.parse(text)


def test_a_marker_split_across_frames_is_found(clamd: ClamdProcess) -> None:
    client = ClamdClient(ClamdAddress.parse(clamd.address))
    half = len(TEST_MARKER) // 2

    with client.instream(frame_bytes=1) as session:  # one frame per chunk
        session.send(b"x" * 1000 + TEST_MARKER[:half])
        session.send(TEST_MARKER[half:] + b"y" * 1000)
        reply = session.finish()

    assert reply.signature == "Filescan.Test.Marker.UNOFFICIAL"


def test_version_names_the_engine(clamd: ClamdProcess) -> None:
    assert ClamdClient(ClamdAddress.parse(clamd.unix_address)).version().startswith("ClamAV 1.")


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        piece = sock.recv(size - len(data))
        assert piece, "the stream ended early"
        data.extend(piece)
    return bytes(data)


class FrameReader(threading.Thread):
    """The clamd end of a socket pair: reads INSTREAM frames up to the empty one, then answers OK."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock
        self.frames: list[bytes] = []

    def run(self) -> None:
        while True:
            size = int.from_bytes(_recv_exactly(self.sock, 4), "big")
            self.frames.append(_recv_exactly(self.sock, size))
            if not size:
                self.sock.sendall(b"stream: OK\0")
                return


def _instream(chunks: list[bytes], *, frame_bytes: int, sndbuf: int | None = None) -> list[bytes]:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.settimeout(30)  # as ClamdClient's sockets: sends may then be partial
        if sndbuf:
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        reader = FrameReader(theirs)
        reader.start()
        session = InstreamSession(ours, frame_bytes=frame_bytes)
        for chunk in chunks:
            session.send(chunk)
        assert session.finish().signature is None
        reader.join(timeout=30)
    return reader.frames


def test_chunks_are_gathered_into_frames_of_at_least_frame_bytes() -> None:
    frames = _instream([b"abc", b"defgh", b"", b"ijklm", b"no"], frame_bytes=10)

    assert frames == [b"abcdefghijklm", b"no", b""]


def test_a_frame_larger_than_the_socket_buffer_arrives_whole() -> None:
    """Partial sends resume where they stopped, across buffer boundaries."""
    chunks = [bytes([n]) * (300_000 + n) for n in range(1, 5)]

    frames = _instream(chunks, frame_bytes=10**9, sndbuf=4096)

    assert frames == [b"".join(chunks), b""]
