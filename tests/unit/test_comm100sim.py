"""The Comm100 simulator itself: the API, served files and their faults, the control API, standalone mode."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devstack.comm100sim import Comm100Simulator, RemoteSimulator
from tests.fixtures.waiting import wait_for

GUID = "12b76589-6ba7-4011-aa23-8779594aab11"


@pytest.fixture
def http(comm100_sim: Comm100Simulator, comm100_token: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=comm100_sim.url, headers={"Authorization": f"Bearer {comm100_token}"}, timeout=5.0
    ) as client:
        yield client


def api(source: str = "ticket", guid: str = GUID) -> str:
    return f"/api/v2/{source}/attachments/{guid}"


# -- the attachment API --------------------------------------------------------------------------


def test_put_and_delete_are_recorded_and_change_the_attachment(
    comm100_sim: Comm100Simulator, http: httpx.Client
) -> None:
    assert http.put(api("livechat"), json={"status": "unavailable"}).json()["status"] == "unavailable"
    assert http.put(api("livechat"), json={"isAvailable": True}).status_code == 200
    assert http.delete(api("livechat")).status_code == 204
    assert http.put(api("livechat"), json={"status": "available"}).status_code == 404  # gone
    assert http.delete(api("livechat")).status_code == 404

    calls = comm100_sim.calls()
    assert [(c.method, c.status) for c in calls] == [
        ("PUT", 200),
        ("PUT", 200),
        ("DELETE", 204),
        ("PUT", 404),
        ("DELETE", 404),
    ]
    assert calls[0].body == {"status": "unavailable"} and calls[0].source == "livechat" and calls[0].auth_ok
    assert comm100_sim.attachments() == {
        f"livechat/{GUID}": {"guid": GUID, "source": "livechat", "deleted": True}
    }


def test_wrong_or_missing_token_is_401(comm100_sim: Comm100Simulator) -> None:
    with httpx.Client(base_url=comm100_sim.url) as anonymous:
        assert anonymous.put(api(), json={"status": "available"}).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert anonymous.put(api(), json={"status": "available"}, headers=wrong).status_code == 401
    assert [c.auth_ok for c in comm100_sim.calls()] == [False, False]
    assert comm100_sim.attachments() == {}


def test_several_tokens_are_accepted_during_a_rotation(comm100_sim: Comm100Simulator) -> None:
    comm100_sim.set_tokens("old-token", "new-token")
    with httpx.Client(base_url=comm100_sim.url) as client:
        for token in ("old-token", "new-token"):
            headers = {"Authorization": f"Bearer {token}"}
            assert client.put(api(), json={"status": "passed"}, headers=headers).status_code == 200


@pytest.mark.parametrize("body", [{"status": "clean"}, {"isAvailable": "yes"}, {}, "not json"])
def test_put_without_a_known_vocabulary_is_400(http: httpx.Client, body: object) -> None:
    response = http.put(api(), content=body) if isinstance(body, str) else http.put(api(), json=body)
    assert response.status_code == 400


def test_vocabularies_can_be_restricted(comm100_token: str) -> None:
    with (
        Comm100Simulator(comm100_token, styles=["isAvailable"]) as sim,
        httpx.Client(base_url=sim.url, headers={"Authorization": f"Bearer {comm100_token}"}) as client,
    ):
        assert client.put(api(), json={"status": "available"}).status_code == 400
        assert client.put(api(), json={"isAvailable": False}).status_code == 200


def test_faults_apply_in_order_to_matching_calls_and_are_used_up(
    comm100_sim: Comm100Simulator, http: httpx.Client
) -> None:
    comm100_sim.inject("status", status=404, guid="other-guid", times=None)
    comm100_sim.inject("status", status=429, retry_after=7, method="PUT")
    comm100_sim.inject("status", status=503, times=2)

    first = http.put(api(), json={"status": "available"})
    assert (first.status_code, first.headers["Retry-After"]) == (429, "7")
    assert http.delete(api("ticket", "other-guid")).status_code == 404
    assert [http.put(api(), json={"status": "available"}).status_code for _ in range(3)] == [503, 503, 200]
    assert http.delete(api("ticket", "other-guid")).status_code == 404  # until cleared
    comm100_sim.clear_faults()
    assert http.delete(api("ticket", "other-guid")).status_code == 204
    assert [c.fault for c in comm100_sim.calls()] == ["status"] * 4 + [None, "status", None]


def test_down_mode_drops_connections_until_cleared(comm100_sim: Comm100Simulator, http: httpx.Client) -> None:
    comm100_sim.down()
    for _ in range(2):
        with pytest.raises(httpx.RemoteProtocolError):
            http.put(api(), json={"status": "available"})
    comm100_sim.clear_faults()
    assert http.put(api(), json={"status": "available"}).status_code == 200
    assert [c.status for c in comm100_sim.calls()] == [0, 0, 200]


def test_stall_delays_the_answer_past_a_client_timeout(
    comm100_sim: Comm100Simulator, comm100_token: str
) -> None:
    comm100_sim.inject("stall", seconds=30)
    with (
        httpx.Client(
            base_url=comm100_sim.url, headers={"Authorization": f"Bearer {comm100_token}"}, timeout=0.3
        ) as client,
        pytest.raises(httpx.ReadTimeout),
    ):
        client.put(api(), json={"status": "available"})
    # Stopping the simulator must not wait out the stall (the fixture stops it; this bounds it).


def test_stop_ends_kept_alive_connections(comm100_token: str) -> None:
    sim = Comm100Simulator(comm100_token).start()
    with httpx.Client(base_url=sim.url, headers={"Authorization": f"Bearer {comm100_token}"}) as client:
        assert client.put(api(), json={"status": "available"}).status_code == 200
        sim.stop()
        with pytest.raises(httpx.TransportError):
            client.put(api(), json={"status": "available"})


# -- served files ----------------------------------------------------------------------------


def test_files_are_served_with_content_length(comm100_sim: Comm100Simulator, tmp_path: Path) -> None:
    on_disk = tmp_path / "big.bin"
    on_disk.write_bytes(bytes(range(256)) * 1000)
    small_url = comm100_sim.add_file("hello.txt", b"hello", content_type="text/plain")
    big_url = comm100_sim.add_file("big file.bin", path=on_disk)

    small = httpx.get(small_url)
    big = httpx.get(big_url)

    assert (small.status_code, small.content, small.headers["Content-Length"]) == (200, b"hello", "5")
    assert small.headers["Content-Type"] == "text/plain"
    assert big.content == on_disk.read_bytes() and big.headers["Content-Length"] == str(256_000)
    assert [(f.name, f.bytes_sent) for f in comm100_sim.fetches()] == [
        ("hello.txt", 5),
        ("big file.bin", 256_000),
    ]


def test_chunked_files_have_no_content_length(comm100_sim: Comm100Simulator) -> None:
    data = b"x" * 200_000
    response = httpx.get(comm100_sim.add_file("chunked.bin", data, chunked=True))
    assert response.content == data
    assert "Content-Length" not in response.headers and response.headers["Transfer-Encoding"] == "chunked"


@pytest.mark.parametrize("status", [404, 500])
def test_file_error_faults(comm100_sim: Comm100Simulator, status: int) -> None:
    response = httpx.get(comm100_sim.add_file("broken.bin", b"data", status=status))
    assert response.status_code == status
    assert httpx.get(comm100_sim.file_url("never-added")).status_code == 404


def test_file_redirect(comm100_sim: Comm100Simulator) -> None:
    response = httpx.get(comm100_sim.add_file("moved", redirect_to="https://elsewhere.example/x"))
    assert (response.status_code, response.headers["Location"]) == (302, "https://elsewhere.example/x")


def test_content_length_that_lies(comm100_sim: Comm100Simulator) -> None:
    with pytest.raises(httpx.RemoteProtocolError):  # claims more than it sends
        httpx.get(comm100_sim.add_file("short.bin", b"x" * 100, content_length=1000))
    understated = httpx.get(comm100_sim.add_file("long.bin", b"y" * 100, content_length=10))
    assert understated.content == b"y" * 10


def test_file_stalls_before_headers_and_mid_body(comm100_sim: Comm100Simulator) -> None:
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(comm100_sim.add_file("slow.bin", b"z" * 10, stall_seconds=30), timeout=0.3)
    received = bytearray()
    with (
        pytest.raises(httpx.ReadTimeout),
        httpx.stream(
            "GET",
            comm100_sim.add_file("slower.bin", b"z" * 1000, stall_seconds=30, stall_after=400),
            timeout=0.3,
        ) as response,
    ):
        for chunk in response.iter_bytes():
            received.extend(chunk)
    assert bytes(received) == b"z" * 400


# -- control over HTTP, state file, standalone ----------------------------------------------------


def test_remote_control_api(comm100_sim: Comm100Simulator, http: httpx.Client) -> None:
    with RemoteSimulator(comm100_sim.url) as remote:
        url = remote.add_file("remote.txt", b"over http", chunked=True)
        assert httpx.get(url).content == b"over http"
        remote.inject("status", status=503, times=1, retry_after="Wed, 21 Oct 2026 07:28:00 GMT")
        answer = http.put(api(), json={"status": "failed"})
        assert (answer.status_code, answer.headers["Retry-After"]) == (503, "Wed, 21 Oct 2026 07:28:00 GMT")
        assert http.put(api(), json={"status": "failed"}).status_code == 200
        assert [(c.status, c.body) for c in remote.calls()] == [
            (503, {"status": "failed"}),
            (200, {"status": "failed"}),
        ]
        assert remote.attachments()[f"ticket/{GUID}"]["status"] == "failed"
        assert [f.name for f in remote.fetches()] == ["remote.txt"]

        remote.set_tokens("rotated-token")
        assert http.put(api(), json={"status": "failed"}).status_code == 401
        remote.reset()
        assert remote.calls() == [] and remote.fetches() == [] and remote.attachments() == {}
        assert httpx.get(url).status_code == 404  # files are forgotten too

        bad = httpx.post(f"{comm100_sim.url}/_sim/faults", json={"kind": "explode"})
        assert bad.status_code == 400


def test_state_file_has_the_url_and_the_calls(comm100_token: str, tmp_path: Path) -> None:
    state_file = tmp_path / "sim.json"
    with Comm100Simulator(comm100_token, state_file=state_file) as sim:
        assert json.loads(state_file.read_text())["url"] == sim.url
        httpx.delete(sim.url + api(), headers={"Authorization": f"Bearer {comm100_token}"})
        state = json.loads(state_file.read_text())
    assert [(c["method"], c["status"], c["guid"]) for c in state["calls"]] == [("DELETE", 204, GUID)]


def test_standalone_process_prints_its_url_and_serves(tmp_path: Path) -> None:
    state_file = tmp_path / "state.json"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "devstack.comm100sim",
            "--port",
            "0",
            "--token",
            "cli-token",
            "--state-file",
            str(state_file),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = wait_for(
            lambda: state_file.exists() and json.loads(state_file.read_text())["url"],
            timeout=20,
            what="the standalone simulator to write its state file",
        )
        assert url.startswith("http://127.0.0.1:")
        with RemoteSimulator(url) as remote:
            response = httpx.put(
                url + api(), json={"status": "available"}, headers={"Authorization": "Bearer cli-token"}
            )
            assert response.status_code == 200
            assert [c.status for c in remote.calls()] == [200]
    finally:
        process.terminate()
        out, _ = process.communicate(timeout=10)
    assert process.returncode == 0
    assert out.splitlines()[0] == url
