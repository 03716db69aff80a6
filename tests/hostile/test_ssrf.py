"""SSRF: file URLs that try to reach something other than an allowed file host.

One corpus, held to the one rule (:func:`controller.urls.check_file_url`) at each place it is
applied: pure, at the webhook's door (422, nothing stored), and by the scanner on every redirect
hop (exit 3, and no connection to anything but the server that redirected).

The allowlist used throughout is the webhook fixture's (``files.comm100.test`` and the suffix
``.cdn.comm100.test``) plus ``127.0.0.1``, so the many other spellings of loopback are tested
against a policy that does allow one of them: an allowed IP must not make its aliases allowed.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from controller.settings import FetchPolicy
from controller.urls import URLRefused, check_file_url, host_allowed
from tests.fixtures.clamd import FileServer, Route, eicar
from tests.fixtures.filescans import (
    ALLOWED_FILE_HOSTS,
    FILE_HOST,
    WebhookProcess,
    event_body,
    filescan_names,
    run_webhook,
)

ALLOWED = ALLOWED_FILE_HOSTS + ",127.0.0.1"
POLICY = FetchPolicy(allowed_file_hosts=ALLOWED.split(","), allow_http=False)
HTTP_POLICY = FetchPolicy(allowed_file_hosts=ALLOWED.split(","), allow_http=True)

# (url, what it tries). Every one must be refused by POLICY.
REFUSED: list[tuple[str, str]] = [
    # private, loopback and link-local addresses not on the list
    ("https://169.254.169.254/latest/meta-data/iam/security-credentials/", "cloud metadata"),
    ("https://169.254.170.2/v2/credentials", "ECS task metadata"),
    ("https://100.100.100.200/latest/meta-data/", "Alibaba metadata"),
    ("https://metadata.google.internal/computeMetadata/v1/", "GCP metadata name"),
    ("https://10.0.0.1/x", "RFC 1918 10/8"),
    ("https://172.16.0.1/x", "RFC 1918 172.16/12"),
    ("https://192.168.1.1/x", "RFC 1918 192.168/16"),
    ("https://127.0.0.2/x", "other loopback address"),
    ("https://0.0.0.0/x", "unspecified address"),
    ("https://localhost/x", "localhost"),
    ("https://kubernetes.default.svc/api", "the cluster's apiserver"),
    # IPv6 and IPv4-mapped IPv6 spellings
    ("https://[::1]/x", "IPv6 loopback"),
    ("https://[::]/x", "IPv6 unspecified"),
    ("https://[::ffff:127.0.0.1]/x", "IPv4-mapped loopback"),
    ("https://[::ffff:7f00:1]/x", "IPv4-mapped loopback, hex"),
    ("https://[0:0:0:0:0:ffff:127.0.0.1]/x", "IPv4-mapped loopback, long form"),
    ("https://[::ffff:169.254.169.254]/x", "IPv4-mapped metadata"),
    ("https://[fe80::1%25eth0]/x", "IPv6 link-local with zone"),
    ("https://[fd00:ec2::254]/x", "AWS IPv6 metadata"),
    ("https://[files.comm100.test]/x", "a name in IPv6 brackets"),
    # decimal, octal, hex and short forms of 127.0.0.1
    ("https://2130706433/x", "decimal"),
    ("https://0177.0.0.1/x", "octal"),
    ("https://0177.0000.0000.0001/x", "octal, padded"),
    ("https://0x7f.0.0.1/x", "hex octet"),
    ("https://0x7f000001/x", "hex"),
    ("https://127.1/x", "short form"),
    ("https://127.0.0.01/x", "leading zero"),
    ("https://%31%32%37.0.0.1/x", "percent-encoded digits"),
    # userinfo tricks
    (f"https://{FILE_HOST}@evil.example/x", "allowed host as user"),
    (f"https://{FILE_HOST}:pw@evil.example/x", "allowed host as user:password"),
    (f"https://evil.example#@{FILE_HOST}/x", "allowed host in the fragment"),
    (f"https://evil.example?@{FILE_HOST}/x", "allowed host in the query"),
    (f"https://user@{FILE_HOST}/x", "credentials for an allowed host"),
    (f"https://:@{FILE_HOST}/x", "empty credentials"),
    (f"https://evil.example%40{FILE_HOST}/x", "percent-encoded @"),
    (f"https://{FILE_HOST}%2f@evil.example/x", "percent-encoded slash before @"),
    (f"https://{FILE_HOST}\uff03@evil.example/x", "fullwidth # before @"),
    # hosts that merely contain, start with or end with an allowed name
    (f"https://{FILE_HOST}.evil.example/x", "allowed name as a prefix"),
    (f"https://evil{FILE_HOST}/x", "allowed name as a suffix without a dot"),
    (f"https://evil-{FILE_HOST}/x", "allowed name after a dash"),
    ("https://cdn.comm100.test/x", "the bare .suffix entry"),
    ("https://evilcdn.comm100.test/x", "suffix without its dot"),
    ("https://a.cdn.comm100.test.evil.example/x", "suffix entry in the middle"),
    (f"https://{FILE_HOST}../x", "two trailing dots"),
    ("https://LOCALHOST./x", "mixed case and trailing dot, not allowed"),
    ("https://LocalHost/x", "mixed case, not allowed"),
    # unicode / IDNA look-alikes
    ("https://f\u0456les.comm100.test/x", "Cyrillic i"),
    ("https://files.comm100.t\u0435st/x", "Cyrillic e"),
    ("https://files\u3002comm100\u3002test/x", "ideographic full stops"),
    ("https://\uff46\uff49\uff4c\uff45\uff53.comm100.test/x", "fullwidth letters"),
    ("https://xn--fles-zve.comm100.test/x", "punycode of a look-alike"),
    ("https://files.comm100.test\u200b/x", "zero-width space"),
    # percent-encoded hosts
    ("https://files%2Ecomm100%2Etest/x", "percent-encoded dots"),
    (f"https://{FILE_HOST}%00.evil.example/x", "percent-encoded NUL"),
    (f"https://{FILE_HOST}%2F.evil.example/x", "percent-encoded slash"),
    # backslashes, whitespace and control characters
    (f"https://evil.example\\@{FILE_HOST}/x", "backslash before @"),
    (f"https://evil.example\\{FILE_HOST}/x", "backslash as a separator"),
    (f"https:\\\\{FILE_HOST}/x", "backslashes for slashes"),
    (f"https://{FILE_HOST} @evil.example/x", "space"),
    (f"https://{FILE_HOST}\t.evil.example/x", "tab"),
    (f"https://{FILE_HOST}\n.evil.example/x", "newline"),
    (f"https://{FILE_HOST}\r\nHost: evil.example/x", "CRLF injection"),
    (f"https://{FILE_HOST}\x00.evil.example/x", "NUL"),
    (f" https://{FILE_HOST}/x", "leading space"),
    (f"https://{FILE_HOST}/x\x7f", "DEL in the path"),
    # no host, or a malformed authority
    (f"https:{FILE_HOST}/x", "no slashes"),
    (f"https:/{FILE_HOST}/x", "one slash"),
    (f"//{FILE_HOST}/x", "scheme-relative"),
    (f"{FILE_HOST}/x", "no scheme"),
    ("https:///x", "empty host"),
    (f"https://{FILE_HOST}:99999/x", "port out of range"),
    (f"https://{FILE_HOST}:443:80/x", "two ports"),
    (f"https://{FILE_HOST}:port/x", "non-numeric port"),
    # schemes other than https
    ("file:///etc/passwd", "file"),
    (f"file://{FILE_HOST}/etc/passwd", "file with an allowed host"),
    (f"gopher://{FILE_HOST}:6379/_FLUSHALL", "gopher"),
    (f"ftp://{FILE_HOST}/x", "ftp"),
    ("data:text/plain;base64,SGVsbG8=", "data"),
    ("javascript:alert(document.domain)", "javascript"),
    (f"dict://{FILE_HOST}:11211/stats", "dict"),
    (f"ldap://{FILE_HOST}/x", "ldap"),
    (f"ws://{FILE_HOST}/x", "websocket"),
    (f"jar:https://{FILE_HOST}/x.jar!/", "jar"),
    (f"httpss://{FILE_HOST}/x", "a scheme that only starts with https"),
    # http while http is not allowed
    (f"http://{FILE_HOST}/x", "http, allowed host"),
    ("http://127.0.0.1/x", "http, allowed IP"),
    (f"HTTP://{FILE_HOST}/x", "http, upper case"),
]

# Every one must be allowed by POLICY: the rule is strict, not broken.
ALLOWED_URLS: list[tuple[str, str]] = [
    (f"https://{FILE_HOST}/attachments/x?sig=abc#frag", "the listed host"),
    ("HTTPS://FILES.Comm100.TEST/x", "mixed case scheme and host"),
    (f"https://{FILE_HOST}./x", "one trailing dot"),
    (f"https://{FILE_HOST}:8443/x", "a port"),
    ("https://a.cdn.comm100.test/x", "a .suffix subdomain"),
    ("https://a.b.CDN.comm100.test./x", "a deeper .suffix subdomain, mixed case, trailing dot"),
    ("https://127.0.0.1/x", "an explicitly allowed IP"),
    ("https://127.0.0.1:9000/x?token=t", "an explicitly allowed IP with a port"),
]


def _ids(cases: list[tuple[str, str]]) -> list[Any]:
    return [pytest.param(url, id=why) for url, why in cases]


# --- (a) the rule itself ---------------------------------------------------------------------


@pytest.mark.parametrize("url", _ids(REFUSED))
def test_check_file_url_refuses(url: str) -> None:
    with pytest.raises(URLRefused) as refused:
        check_file_url(url, POLICY)
    # The reason never echoes a query string (signed URLs carry secrets there).
    assert "sig=" not in str(refused.value)


@pytest.mark.parametrize("url", _ids(ALLOWED_URLS))
def test_check_file_url_allows(url: str) -> None:
    parts = check_file_url(url, POLICY)

    assert host_allowed(parts.hostname or "", POLICY.allowed_file_hosts)


def test_http_is_allowed_only_when_the_setting_says_so() -> None:
    url = f"http://{FILE_HOST}/x"
    with pytest.raises(URLRefused, match="scheme"):
        check_file_url(url, POLICY)

    assert check_file_url(url, HTTP_POLICY).hostname == FILE_HOST


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "gopher://127.0.0.1/_x", "ftp://127.0.0.1/x", f"ws://{FILE_HOST}/"]
)
def test_allowing_http_allows_no_other_scheme(url: str) -> None:
    with pytest.raises(URLRefused, match="scheme"):
        check_file_url(url, HTTP_POLICY)


def test_an_empty_allowlist_allows_nothing() -> None:
    with pytest.raises(URLRefused):
        check_file_url(f"https://{FILE_HOST}/x", FetchPolicy(allowed_file_hosts=[], allow_http=True))


# --- (b) the webhook: 422, nothing stored ------------------------------------------------------


@pytest.fixture(scope="module")
def ssrf_webhook(
    cluster: Any, filescan_crd: str, module_namespace: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WebhookProcess]:
    """The webhook with this module's allowlist (127.0.0.1 added) and http not allowed."""
    env = {"FILESCAN_ALLOWED_FILE_HOSTS": ALLOWED, "FILESCAN_ALLOW_HTTP": "false"}
    with run_webhook(cluster, module_namespace, tmp_path_factory.mktemp("ssrf-webhook"), env=env) as running:
        yield running


@pytest.mark.cluster
def test_webhook_refuses_every_corpus_url_and_stores_nothing(cluster: Any, ssrf_webhook: WebhookProcess) -> None:
    before = filescan_names(cluster, ssrf_webhook.namespace)
    wrong = []
    for url, why in REFUSED:
        for source in ("ticket", "livechat"):
            response = ssrf_webhook.post(source, event_body(source, fileURL=url))
            fields = [error["field"] for error in response.json().get("errors", [])]
            if response.status_code != 422 or fields != ["fileURL"]:
                wrong.append((why, source, response.status_code, response.text[:200]))

    assert wrong == [], f"{len(wrong)} corpus URLs not refused as fileURL with 422: {wrong}"
    assert filescan_names(cluster, ssrf_webhook.namespace) == before
    # Refused at the door, not by the apiserver: every refusal logged as url_refused.
    outcomes = [json.loads(line).get("outcome") for line in ssrf_webhook.logs().splitlines() if '"outcome"' in line]
    assert outcomes.count("url_refused") >= 2 * len(REFUSED)


@pytest.mark.cluster
def test_webhook_accepts_the_positive_controls(cluster: Any, ssrf_webhook: WebhookProcess) -> None:
    stored = set()
    for url, why in ALLOWED_URLS:
        body = event_body("ticket", fileURL=url)
        response = ssrf_webhook.post("ticket", body)
        assert response.status_code == 200, (why, response.text)
        stored.add(f"ticket-{body['guid']}")

    assert stored <= filescan_names(cluster, ssrf_webhook.namespace)


# --- (c) the scanner, on redirects -------------------------------------------------------------


class Canary:
    """A TCP listener on 127.0.0.2 that records every connection and answers nothing: anything
    that reaches it was an SSRF, whatever protocol it spoke."""

    def __init__(self, host: str = "127.0.0.2") -> None:
        self.connections: list[tuple[str, int]] = []
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, 0))
        self._socket.listen(16)
        self._socket.settimeout(0.05)
        self.host = host
        self.port: int = self._socket.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="ssrf-canary", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, peer = self._socket.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections.append(peer)
            connection.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._socket.close()


@pytest.fixture
def canary() -> Iterator[Canary]:
    listener = Canary()
    try:
        yield listener
    finally:
        listener.stop()


# Where a redirect may try to send the scanner. {canary} is host:port of the canary on 127.0.0.2,
# {port} its port, {self} the port of the file server that redirects (127.0.0.1, allowed).
REDIRECTS: list[tuple[str, str]] = [
    ("http://{canary}/x", "a host not on the list"),
    ("https://{canary}/x", "https to a host not on the list"),
    ("http://localhost:{self}/target", "the same server by another name"),
    ("HTTP://LOCALHOST.:{self}/target", "the same server, mixed case and a trailing dot"),
    ("http://[::ffff:127.0.0.2]:{port}/x", "IPv4-mapped IPv6"),
    ("http://[::ffff:7f00:2]:{port}/x", "IPv4-mapped IPv6, hex"),
    ("http://[::ffff:127.0.0.1]:{self}/target", "IPv4-mapped spelling of the allowed IP"),
    ("http://2130706434:{port}/x", "decimal"),
    ("http://0177.0.0.2:{port}/x", "octal"),
    ("http://0x7f.0.0.2:{port}/x", "hex octet"),
    ("http://0x7f000002:{port}/x", "hex"),
    ("http://127.2:{port}/x", "short form"),
    ("http://2130706433:{self}/target", "decimal spelling of the allowed IP"),
    ("http://0177.0.0.1:{self}/target", "octal spelling of the allowed IP"),
    ("http://127.0.0.1@{canary}/x", "allowed host as user"),
    ("http://127.0.0.1:pw@{canary}/x", "allowed host as user:password"),
    ("http://{canary}#@127.0.0.1/x", "allowed host in the fragment"),
    ("http://{canary}\\@127.0.0.1/x", "backslash before @"),
    ("http://127.0.0.1.{canary}/x", "allowed IP as a prefix"),
    ("http://%31%32%37.0.0.2:{port}/x", "percent-encoded host"),
    ("http://127.0.0.2.:{port}/x", "trailing dot"),
    ("http://127.0.0.2 :{port}/x", "space"),
    ("http://127.0.0.2\t:{port}/x", "tab"),
    ("//{canary}/x", "scheme-relative Location"),
    ("/\\{canary}/x", "slash-backslash Location (a browser's //)"),
    ("\\\\{canary}/x", "backslashes Location"),
    ("gopher://{canary}/_GET%20/", "gopher"),
    ("ftp://{canary}/x", "ftp"),
    ("file:///etc/passwd", "file"),
    ("data:text/plain;base64,SGVsbG8=", "data"),
    ("javascript:alert(1)", "javascript"),
    ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
    ("http://[::1]:{port}/x", "IPv6 loopback"),
]


@pytest.mark.parametrize("location", _ids(REDIRECTS))
def test_scanner_refuses_a_redirect_to_each_corpus_url(
    location: str, run_scan: Any, file_server: FileServer, canary: Canary
) -> None:
    file_server.add("/target", Route(body=eicar()))
    target = location.format(canary=f"{canary.host}:{canary.port}", port=canary.port, self=file_server.port)
    url = file_server.add("/hop", Route(redirect_to=target))

    outcome = run_scan(url)
    code, result = outcome.code, outcome.result

    assert (code, result.get("reason")) == (3, "url-refused"), result
    assert canary.connections == []
    assert [seen.path for seen in file_server.requests] == ["/hop"]


def test_canary_sees_a_redirect_the_policy_allows(
    monkeypatch: pytest.MonkeyPatch, run_scan: Any, file_server: FileServer, canary: Canary
) -> None:
    """The harness can fail: with 127.0.0.2 on the list, the same redirect does reach the canary."""
    monkeypatch.setenv("FILESCAN_ALLOWED_FILE_HOSTS", "127.0.0.1,127.0.0.2")
    url = file_server.add("/hop", Route(redirect_to=f"http://{canary.host}:{canary.port}/x"))

    outcome = run_scan(url)
    code, result = outcome.code, outcome.result

    assert code == 2, result  # the canary hangs up without an answer: a transient network error
    assert len(canary.connections) >= 1


def test_scanner_follows_a_redirect_within_the_allowed_ip(run_scan: Any, file_server: FileServer) -> None:
    """Positive control: an explicitly allowed IP host, redirected to itself, is scanned."""
    file_server.add("/target", Route(body=eicar()))
    url = file_server.add("/hop", Route(redirect_to=f"http://127.0.0.1:{file_server.port}/target"))

    outcome = run_scan(url)
    code, result = outcome.code, outcome.result

    assert (code, result.get("verdict")) == (0, "infected"), result
    assert [seen.path for seen in file_server.requests] == ["/hop", "/target"]
