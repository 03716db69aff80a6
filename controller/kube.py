"""The only module that talks to the Kubernetes API (besides kopf's own client in the operator).

Design decisions:

* Requests go through async keep-alive pools, not through the ``kubernetes`` library's
  synchronous, thread-pooled client: the webhook must keep up with the apiserver at high
  concurrency, and an async pool costs a socket per in-flight request, not a thread. Unary calls
  use :mod:`controller.http1`, which costs a third of httpx's CPU per call (the webhook's whole
  process went from about 2.0 to 0.7 CPU ms per event); watches, and everything when a proxy is
  configured, use one ``httpx.AsyncClient``. The ``kubernetes`` library is used only for what it
  does well and we must not re-invent: resolving credentials (``KUBECONFIG`` or
  ``~/.kube/config``, else in-cluster; exec plugins, inline certificate data, token files). Its
  refresh hook is called before each request, so a rotated service-account token is picked up
  without a restart. The kubeconfig is never written.
* Errors are classified in one place, :func:`_raise_for_status`: connection failures, timeouts,
  429 and 5xx are :class:`KubeTransientError` (the same call may succeed later); other 4xx are
  :class:`KubePermanentError`, with one class per status that matters (404, 409, 422, 401/403).
  A 409 whose reason is ``AlreadyExists`` is :class:`KubeAlreadyExists`; creating an object
  turns it into an :class:`AlreadyExists` *result*, because for deterministically named objects
  it means "already done", not failure. The cause is always chained, and the apiserver's message
  is truncated before it reaches an exception (and so a log line).
* The client is a plain class with async methods and :meth:`KubeClient.aclose`; it holds no
  global state, so a process (or a test) may have several.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import importlib.util
import json
import os
import ssl
import sys
from collections.abc import AsyncIterator, Callable, Generator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final
from urllib.parse import quote, urlencode

import httpx
from kubernetes import config as kube_config
from kubernetes.client import Configuration

from controller.http1 import Answer, ConnectionPool, HTTPError

GROUP: Final = "comm100.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
FILESCAN_KIND: Final = "FileScan"
FILESCAN_PLURAL: Final = "filescans"

_MAX_MESSAGE = 512
"""Characters of an apiserver answer kept in an exception message."""

JSONObject = dict[str, Any]

# httpcore 1.0 tries ``import sniffio`` whenever it sets up a lock, i.e. on every request. When
# sniffio is not installed (anyio 4 no longer needs it), each attempt searches sys.path again: about
# a dozen failed stat() calls per request, a fifth of the webhook's CPU on a busy apiserver path.
# Recording the absence once makes the failing import immediate; httpcore then assumes asyncio,
# which is what it would have concluded anyway.
if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
    sys.modules["sniffio"] = None  # type: ignore[assignment]


class KubeError(Exception):
    """A Kubernetes API call failed. ``status`` is the HTTP status (None when no answer came)."""

    def __init__(self, message: str, *, status: int | None = None, reason: str | None = None) -> None:
        super().__init__(_truncate(message))
        self.status = status
        self.reason = reason


class KubeTransientError(KubeError):
    """The same call may succeed later: the apiserver was unreachable, slow, overloaded or failing."""


class KubePermanentError(KubeError):
    """The apiserver refused the call; repeating it unchanged will not help."""


class KubeNotFound(KubePermanentError):
    """404: the object (or its namespace, or its resource type) does not exist."""


class KubeConflict(KubePermanentError):
    """409: the object changed under us, or exists already."""


class KubeAlreadyExists(KubeConflict):
    """409 ``AlreadyExists``: an object of that name is stored already."""


class KubeInvalid(KubePermanentError):
    """422: the object failed validation (OpenAPI schema or CEL rules)."""


class KubeForbidden(KubePermanentError):
    """401 or 403: our credentials are not accepted, or not allowed to do this."""


@dataclass(frozen=True)
class Created:
    """The object was stored; ``object`` is what the apiserver returned (decoded when first read:
    the webhook, which creates most, never reads it)."""

    content: bytes

    @functools.cached_property
    def object(self) -> JSONObject:
        created: JSONObject = json.loads(self.content)
        return created


@dataclass(frozen=True)
class AlreadyExists:
    """An object of that name was stored already (a repost); nothing was changed."""

    name: str


def _truncate(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE else text[:_MAX_MESSAGE] + "…(truncated)"


def _raise_for_status(status: int, content: bytes, what: str) -> None:
    """The one place that decides what an answer's status means."""
    if 200 <= status < 300:
        return
    reason: str | None = None
    message = content.decode(errors="replace")
    try:
        body = json.loads(message)
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("kind") == "Status":
        reason = body.get("reason") or None
        message = str(body.get("message") or message)
    text = f"{what}: HTTP {status}{f' {reason}' if reason else ''}: {_truncate(message)}"
    cls: type[KubeError]
    if status == 404:
        cls = KubeNotFound
    elif status == 409:
        cls = KubeAlreadyExists if reason == "AlreadyExists" else KubeConflict
    elif status == 422:
        cls = KubeInvalid
    elif status in (401, 403):
        cls = KubeForbidden
    elif status == 429 or status >= 500:
        cls = KubeTransientError
    else:
        cls = KubePermanentError
    raise cls(text, status=status, reason=reason)


@dataclass(frozen=True)
class KubeCredentials:
    """Where the apiserver is and how to prove who we are, as resolved by the ``kubernetes`` library."""

    server: str
    verify: ssl.SSLContext | bool
    authorization: Callable[[], str | None]
    proxy: str | None = None

    @classmethod
    def from_configuration(cls, configuration: Configuration) -> KubeCredentials:
        if configuration.verify_ssl:
            context = ssl.create_default_context(cafile=configuration.ssl_ca_cert or None)
        else:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if configuration.cert_file:
            context.load_cert_chain(configuration.cert_file, configuration.key_file or None)

        def authorization() -> str | None:
            # Calls the library's refresh hook (rotated service-account tokens, exec plugins).
            value = configuration.get_api_key_with_prefix("BearerToken")
            return str(value) if value else None

        return cls(
            server=str(configuration.host).rstrip("/"),
            verify=context,
            authorization=authorization,
            proxy=configuration.proxy or None,
        )

    @classmethod
    def from_environment(cls) -> KubeCredentials:
        """Standard resolution: ``$KUBECONFIG``, else in-cluster, else ``~/.kube/config``."""
        configuration = Configuration()
        # Read $KUBECONFIG now: the library reads it once, when it is imported.
        kubeconfig = os.environ.get("KUBECONFIG") or None
        if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            kube_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            kube_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig, client_configuration=configuration, persist_config=False
            )
        return cls.from_configuration(configuration)


_HEADERS: Final = (("Accept", "application/json"), ("User-Agent", "filescan-operator"))


def _ssl_context(verify: ssl.SSLContext | bool) -> ssl.SSLContext:
    if isinstance(verify, ssl.SSLContext):
        return verify
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class _BearerAuth(httpx.Auth):
    def __init__(self, authorization: Callable[[], str | None]) -> None:
        self._authorization = authorization

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        value = self._authorization()
        if value:
            request.headers["Authorization"] = value
        yield request


class KubeClient:
    """Async access to the Kubernetes API; create one per process and :meth:`aclose` it."""

    def __init__(
        self,
        credentials: KubeCredentials,
        *,
        timeout: float = 5.0,
        max_connections: int = 8,
    ) -> None:
        self.server = credentials.server
        self._timeout = timeout
        # Callers wait here, in FIFO order, not in httpx's pool: its queue is rescanned against every
        # connection each time any request starts or ends, which costs more CPU than the call itself
        # once a few dozen requests wait.
        self._slots = asyncio.Semaphore(max_connections)
        self._client = httpx.AsyncClient(
            base_url=credentials.server,
            verify=credentials.verify,
            auth=_BearerAuth(credentials.authorization),
            proxy=credentials.proxy,
            trust_env=False,
            follow_redirects=False,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 3.0)),
            # Room for watches beside the unary calls that ``_slots`` admits.
            limits=httpx.Limits(max_connections=2 * max_connections, max_keepalive_connections=max_connections),
            headers=dict(_HEADERS),
        )
        # Unary calls go through a leaner client of our own (see controller.http1); httpx keeps the
        # watches, and everything when a proxy is configured.
        self._authorization = credentials.authorization
        self._pool: ConnectionPool | None = None
        if credentials.proxy is None:
            self._pool = ConnectionPool(
                credentials.server,
                ssl_context=_ssl_context(credentials.verify),
                connect_timeout=min(timeout, 3.0),
                headers=_HEADERS,
            )

    @classmethod
    def from_environment(cls, *, timeout: float = 5.0, max_connections: int = 8) -> KubeClient:
        """A client with the standard kubeconfig / in-cluster credentials."""
        return cls(KubeCredentials.from_environment(), timeout=timeout, max_connections=max_connections)

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
        await self._client.aclose()

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.aclose()

    # -- plumbing -----------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Answer:
        content = None if body is None else json.dumps(body).encode()
        try:
            async with self._slots:
                if self._pool is None:
                    response = await self._client.request(
                        method,
                        path,
                        content=content,
                        headers={"Content-Type": content_type} if content is not None else None,
                        params=params,
                    )
                    answer = Answer(response.status_code, response.content)
                else:
                    headers = [("Content-Type", content_type)] if content is not None else []
                    if authorization := self._authorization():
                        headers.append(("Authorization", authorization))
                    target = f"{path}?{urlencode(params)}" if params else path
                    async with asyncio.timeout(self._timeout):
                        answer = await self._pool.request(method, target, headers=headers, body=content)
        except (httpx.TimeoutException, TimeoutError) as error:
            raise KubeTransientError(f"{what}: timed out after {self._timeout}s") from error
        except (httpx.TransportError, HTTPError, OSError) as error:
            raise KubeTransientError(f"{what}: {type(error).__name__}: {error}") from error
        _raise_for_status(answer.status, answer.body, what)
        return answer

    async def _list(self, path: str, *, what: str, params: Mapping[str, str] | None = None) -> list[JSONObject]:
        """The ``items`` of a list call."""
        response = await self._request("GET", path, what=what, params=params)
        items: list[JSONObject] = response.json().get("items", [])
        return items

    @staticmethod
    def _filescans_path(namespace: str, name: str | None = None) -> str:
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{quote(namespace, safe='')}/{FILESCAN_PLURAL}"
        return f"{path}/{quote(name, safe='')}" if name else path

    # -- cluster ------------------------------------------------------------------------------

    async def check_ready(self) -> None:
        """Raise :class:`KubeError` unless the apiserver answers ``/readyz`` with 200."""
        await self._request("GET", "/readyz", what="GET /readyz")

    # -- FileScans ----------------------------------------------------------------------------

    async def create_filescan(
        self,
        namespace: str,
        name: str,
        spec: Mapping[str, Any],
        *,
        labels: Mapping[str, str] | None = None,
    ) -> Created | AlreadyExists:
        """Store a FileScan; a name taken already is the :class:`AlreadyExists` result."""
        manifest: JSONObject = {
            "apiVersion": API_VERSION,
            "kind": FILESCAN_KIND,
            "metadata": {
                "name": name,
                "namespace": namespace,
                **({"labels": dict(labels)} if labels else {}),
            },
            "spec": dict(spec),
        }
        try:
            response = await self._request(
                "POST",
                self._filescans_path(namespace),
                what=f"create FileScan {namespace}/{name}",
                body=manifest,
            )
        except KubeAlreadyExists:
            return AlreadyExists(name)
        return Created(response.body)

    async def get_filescan(self, namespace: str, name: str) -> JSONObject:
        """The FileScan; :class:`KubeNotFound` when there is none."""
        response = await self._request(
            "GET", self._filescans_path(namespace, name), what=f"get FileScan {namespace}/{name}"
        )
        found: JSONObject = response.json()
        return found

    async def list_filescans(self, namespace: str) -> list[JSONObject]:
        """Every FileScan in the namespace."""
        return await self._list(self._filescans_path(namespace), what=f"list FileScans in {namespace}")

    async def wait_for_filescan(
        self,
        namespace: str,
        name: str,
        condition: Callable[[JSONObject], bool],
        *,
        timeout: float,
    ) -> JSONObject | None:
        """Watch one FileScan until ``condition(obj)`` holds; ``None`` on timeout or deletion.

        A get gives the current state and the resourceVersion to watch from, so no change between
        the two is missed; when the watch ends (server timeout, 410 Gone) the loop gets again.
        """
        try:
            async with asyncio.timeout(timeout):
                while True:
                    current = await self.get_filescan(namespace, name)
                    if condition(current):
                        return current
                    version = str(current["metadata"]["resourceVersion"])
                    async for kind, obj in self._watch_filescan(namespace, name, version, timeout):
                        if kind == "DELETED":
                            return None
                        if kind in ("ADDED", "MODIFIED") and condition(obj):
                            return obj
                        if kind == "ERROR":
                            break  # typically 410 Gone: get again and watch from there
        except TimeoutError:
            return None
        except KubeNotFound:
            return None

    async def _watch_filescan(
        self, namespace: str, name: str, resource_version: str, timeout: float
    ) -> AsyncIterator[tuple[str, JSONObject]]:
        params = {
            "watch": "true",
            "fieldSelector": f"metadata.name={name}",
            "resourceVersion": resource_version,
            "timeoutSeconds": str(max(1, int(timeout + 1))),
        }
        what = f"watch FileScan {namespace}/{name}"
        try:
            async with self._client.stream(
                "GET",
                self._filescans_path(namespace),
                params=params,
                timeout=httpx.Timeout(self._timeout, read=timeout + 5),
            ) as response:
                if response.status_code >= 300:
                    await response.aread()
                    _raise_for_status(response.status_code, response.content, what)
                async for line in response.aiter_lines():
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    yield str(event.get("type")), event.get("object") or {}
        except httpx.TimeoutException as error:
            raise KubeTransientError(f"{what}: timed out") from error
        except httpx.TransportError as error:
            raise KubeTransientError(f"{what}: {type(error).__name__}: {error}") from error

    # -- the operator's calls -----------------------------------------------------------------
    # FileScan status, scan Jobs, their pods and Events. kopf watches; these read and write.

    async def patch_filescan_status(
        self, namespace: str, name: str, status: Mapping[str, Any], *, resource_version: str | None = None
    ) -> JSONObject:
        """Merge-patch the status subresource (``None`` values remove fields); returns the object.

        With ``resource_version`` the patch applies only to that version of the object
        (:class:`KubeConflict` otherwise), for writes that must not overtake another one.
        """
        body: JSONObject = {"status": dict(status)}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        response = await self._request(
            "PATCH",
            self._filescans_path(namespace, name) + "/status",
            what=f"patch FileScan {namespace}/{name} status",
            body=body,
            content_type="application/merge-patch+json",
        )
        patched: JSONObject = response.json()
        return patched

    async def delete_filescan(self, namespace: str, name: str, *, uid: str) -> None:
        """Delete exactly that FileScan (a newer one of the same name is left alone)."""
        try:
            await self._request(
                "DELETE",
                self._filescans_path(namespace, name),
                what=f"delete FileScan {namespace}/{name}",
                body={"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": uid},
                      "propagationPolicy": "Background"},
            )
        except (KubeNotFound, KubeConflict):
            return

    async def create_job(self, namespace: str, manifest: Mapping[str, Any]) -> Created | AlreadyExists:
        """Create a Job; a name taken already is the :class:`AlreadyExists` result."""
        name = str(manifest["metadata"]["name"])
        try:
            response = await self._request(
                "POST", f"/apis/batch/v1/namespaces/{quote(namespace, safe='')}/jobs",
                what=f"create Job {namespace}/{name}", body=manifest,
            )
        except KubeAlreadyExists:
            return AlreadyExists(name)
        return Created(response.body)

    async def get_job(self, namespace: str, name: str) -> JSONObject:
        response = await self._request(
            "GET", f"/apis/batch/v1/namespaces/{quote(namespace, safe='')}/jobs/{quote(name, safe='')}",
            what=f"get Job {namespace}/{name}",
        )
        job: JSONObject = response.json()
        return job

    async def list_jobs(self, namespace: str, label_selector: str) -> list[JSONObject]:
        return await self._list(
            f"/apis/batch/v1/namespaces/{quote(namespace, safe='')}/jobs",
            what=f"list Jobs in {namespace}", params={"labelSelector": label_selector},
        )

    async def list_pods(self, namespace: str, label_selector: str) -> list[JSONObject]:
        return await self._list(
            f"/api/v1/namespaces/{quote(namespace, safe='')}/pods",
            what=f"list pods in {namespace}", params={"labelSelector": label_selector},
        )

    async def create_event(
        self, regarding: Mapping[str, Any], kind: str, reason: str, message: str, *, component: str
    ) -> None:
        """Post a core/v1 Event about ``regarding`` (``kind`` is ``Normal`` or ``Warning``)."""
        meta = regarding["metadata"]
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": regarding.get("apiVersion", API_VERSION),
                "kind": regarding.get("kind", FILESCAN_KIND),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": kind,
            "reason": reason,
            "message": _truncate(message),
            "source": {"component": component},
            "reportingComponent": component,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        await self._request(
            "POST", f"/api/v1/namespaces/{quote(meta['namespace'], safe='')}/events",
            what=f"create Event {reason} for {meta['name']}", body=event,
        )

    async def get_kopf_peering(self, namespace: str, name: str) -> JSONObject:
        """kopf's peering record (``kopf.dev/v1`` KopfPeering): which replicas are alive."""
        response = await self._request(
            "GET", f"/apis/kopf.dev/v1/namespaces/{quote(namespace, safe='')}/kopfpeerings/{quote(name, safe='')}",
            what=f"get KopfPeering {namespace}/{name}",
        )
        peering: JSONObject = response.json()
        return peering
