"""Which ``fileURL`` values may be fetched: the one rule shared by the webhook and the scanner.

Design decisions:

* An explicit host allowlist is the whole defence against SSRF. We never resolve names or judge
  addresses: a host on the list is trusted even if it is an IP or resolves to a private address
  (so local testing works), and no other host ever is, however it is spelled.
* The URL is parsed once with the standard library and refused when anything is ambiguous:
  userinfo (``https://allowed@evil/``), backslashes, whitespace or control characters, a missing
  host. Hosts are compared after lower-casing and dropping one trailing dot, exactly, never by
  substring, so ``allowed.example.evil`` does not match ``allowed.example``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Protocol
from urllib.parse import SplitResult, urlsplit

_FORBIDDEN_CHARS = re.compile(r"[\x00-\x20\x7f\\]")


class FetchPolicyLike(Protocol):
    """What a URL is checked against: :class:`controller.settings.FetchPolicy` in the webhook and
    operator, :class:`controller.scanconfig.FetchRules` in the scanner (which does not load pydantic)."""

    @property
    def allowed_file_hosts(self) -> Sequence[str]: ...

    @property
    def allow_http(self) -> bool: ...


class URLRefused(ValueError):
    """The URL may not be fetched; the message says why without echoing its query string."""


def host_allowed(host: str, allowed: Iterable[str]) -> bool:
    """True when ``host`` equals an entry, or is a subdomain of a ``.suffix`` entry."""
    host = host.lower().removesuffix(".")
    if not host:
        return False
    for entry in allowed:
        entry = entry.lower().removesuffix(".")
        if entry.startswith("."):
            if host.endswith(entry) and len(host) > len(entry):
                return True
        elif host == entry:
            return True
    return False


def check_file_url(url: str, policy: FetchPolicyLike) -> SplitResult:
    """Return the parsed URL when the policy allows fetching it, else raise :class:`URLRefused`."""
    if _FORBIDDEN_CHARS.search(url):
        raise URLRefused("fileURL contains whitespace, control characters or backslashes")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a malformed port
    except ValueError as error:
        raise URLRefused(f"fileURL is not a valid URL: {error}") from None
    schemes = {"https", "http"} if policy.allow_http else {"https"}
    if parts.scheme.lower() not in schemes:
        raise URLRefused(f"fileURL scheme must be {' or '.join(sorted(schemes))}")
    if "@" in parts.netloc:
        raise URLRefused("fileURL must not carry credentials (user@host)")
    host = parts.hostname or ""
    if not host:
        raise URLRefused("fileURL has no host")
    if not host_allowed(host, policy.allowed_file_hosts):
        raise URLRefused(f"fileURL host {host!r} is not on the allowed file hosts")
    del port
    return parts


def redact_url(url: str) -> str:
    """The URL without its query string and fragment, safe to log (signed URLs carry secrets there)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.hostname or ""
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    suffix = "?…" if parts.query else ""
    return f"{parts.scheme}://{netloc}{parts.path}{suffix}"
