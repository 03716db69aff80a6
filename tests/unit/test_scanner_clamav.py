"""The clamd client's address parsing, and its session against a real clamd."""

from __future__ import annotations

import socket

import pytest

from controller.clamav import ClamdAddress, ClamdClient
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

    with client.instream() as session:
        session.send(b"x" * 1000 + TEST_MARKER[:half])
        session.send(TEST_MARKER[half:] + b"y" * 1000)
        reply = session.finish()

    assert reply.signature == "Filescan.Test.Marker.UNOFFICIAL"


def test_version_names_the_engine(clamd: ClamdProcess) -> None:
    assert ClamdClient(ClamdAddress.parse(clamd.unix_address)).version().startswith("ClamAV 1.")
