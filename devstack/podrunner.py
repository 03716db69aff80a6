"""The pod runner: the kubelet's stand-in for a machine with no container runtime.

It registers a Ready Node, binds pods that have no node, and runs each container's ``command`` +
``args`` as a local process with the pod's environment and volumes, then reports status the way a
kubelet does, so the real Job controller, garbage collector and Deployment controller do the rest.

Design decisions:

* Images are not pulled: a container's program must exist on this machine (the devstack puts the
  project's ``.venv/bin`` first on PATH). A container without ``command`` cannot be run, because
  an image's entrypoint is unknown here, unless ``--image-entrypoint IMAGE_PREFIX=PROGRAM`` says
  which program stands in for that image.
* Volumes (secret, configMap, emptyDir, projected service-account tokens, downward API) are
  materialised in a per-pod directory and bind-mounted at their ``mountPath`` inside a private
  mount namespace (``unshare --mount``), as is the termination-message file; the mount points are
  created on the host file system if missing (empty directories and files, left in place).
* One loop owns all decisions; a watch feeds it the latest pods, and it writes status only on a
  transition. Every API error is logged and retried on the next pass, so the runner survives the
  apiserver or etcd going away.
* Deliberately generic: nothing here knows what the programs it runs are.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import json
import logging
import os
import re
import shlex
import shutil
import signal
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

log = logging.getLogger("podrunner")

TERMINATION_MESSAGE_LIMIT = 4096
FALLBACK_LOG_LIMIT = 2048
DEFAULT_TERMINATION_PATH = "/dev/termination-log"

Obj = dict[str, Any]


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(value: str) -> dt.datetime:
    return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


class ApiError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"{status}: {body[:300]}")
        self.status = status


class Api:
    """A minimal JSON client for the apiserver, authenticated with a client certificate."""

    def __init__(self, server: str, ca: str, cert: str, key: str) -> None:
        self.server = server
        tls = ssl.create_default_context(cafile=ca)
        tls.load_cert_chain(cert, key)
        self.http = httpx.Client(
            base_url=server, verify=tls, timeout=httpx.Timeout(10.0),
            headers={"User-Agent": "devstack-pod-runner"},
        )
        self._watch_http = httpx.Client(
            base_url=server, verify=tls,
            timeout=httpx.Timeout(10.0, read=90.0), headers={"User-Agent": "devstack-pod-runner"},
        )

    def request(self, method: str, path: str, body: Any = None, content_type: str | None = None,
                params: dict[str, str] | None = None) -> Obj:
        headers = {"Content-Type": content_type} if content_type else {}
        resp = self.http.request(method, path, json=body, headers=headers, params=params)
        if resp.status_code >= 300:
            raise ApiError(resp.status_code, resp.text)
        result: Obj = resp.json() if resp.content else {}
        return result

    def get(self, path: str) -> Obj:
        return self.request("GET", path)

    def merge_patch(self, path: str, body: Obj) -> Obj:
        return self.request("PATCH", path, body, "application/merge-patch+json")

    def watch(self, path: str, resource_version: str) -> Any:
        params = {"watch": "1", "resourceVersion": resource_version, "allowWatchBookmarks": "true",
                  "timeoutSeconds": "60"}
        with self._watch_http.stream("GET", path, params=params) as resp:
            if resp.status_code >= 300:
                raise ApiError(resp.status_code, resp.read().decode(errors="replace"))
            for line in resp.iter_lines():
                if line:
                    yield json.loads(line)


@dataclass
class ContainerRun:
    name: str
    spec: Obj
    log_path: Path
    term_path: Path
    proc: subprocess.Popen[bytes] | None = None
    started_at: str | None = None
    restart_count: int = 0
    terminated: Obj | None = None
    next_start: float = 0.0


@dataclass
class PodRun:
    uid: str
    namespace: str
    name: str
    root: Path
    containers: dict[str, ContainerRun] = field(default_factory=dict)
    start_time: str = field(default_factory=now_iso)
    reported: str = ""
    deadline_exceeded: bool = False
    final_phase: str | None = None
    config_error: str | None = None
    killed: bool = False


class PodRunner:
    def __init__(self, api: Api, node_name: str, workdir: Path, node_labels: dict[str, str],
                 entrypoints: dict[str, list[str]]) -> None:
        self.api = api
        self.node_name = node_name
        self.workdir = workdir
        self.node_labels = {
            "kubernetes.io/hostname": node_name, "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64", **node_labels,
        }
        self.entrypoints = entrypoints
        self.pods: dict[str, Obj] = {}
        self.runs: dict[str, PodRun] = {}
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.stopping = threading.Event()
        host = httpx.URL(api.server)
        self.api_host, self.api_port = host.host, host.port or 443

    # ---- node --------------------------------------------------------------------------------
    def _node_status(self) -> Obj:
        now = now_iso()
        resources = {"cpu": str(os.cpu_count() or 2), "memory": "16Gi", "pods": "250",
                     "ephemeral-storage": "50Gi"}
        ready = {"type": "Ready", "status": "True", "reason": "KubeletReady",
                 "message": "devstack pod runner is posting ready status",
                 "lastHeartbeatTime": now, "lastTransitionTime": now}
        return {
            "capacity": resources, "allocatable": resources, "conditions": [ready],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                          {"type": "Hostname", "address": self.node_name}],
            "nodeInfo": {"kubeletVersion": "v0.0.0-devstack", "operatingSystem": "linux",
                         "architecture": "amd64", "containerRuntimeVersion": "devstack://local-process",
                         "kernelVersion": os.uname().release, "osImage": "devstack",
                         "kubeProxyVersion": "", "machineID": "", "systemUUID": "", "bootID": ""},
        }

    def register_node(self) -> None:
        node = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": self.node_name, "labels": self.node_labels}, "spec": {}}
        try:
            self.api.request("POST", "/api/v1/nodes", node)
        except ApiError as error:
            if error.status != 409:
                raise
            self.api.merge_patch(f"/api/v1/nodes/{self.node_name}", {"metadata": {"labels": self.node_labels}})
        self.api.merge_patch(f"/api/v1/nodes/{self.node_name}/status", {"status": self._node_status()})

    def heartbeat_forever(self) -> None:
        while not self.stopping.wait(20):
            try:
                self.api.merge_patch(f"/api/v1/nodes/{self.node_name}/status", {"status": self._node_status()})
            except (httpx.HTTPError, ApiError) as error:
                log.warning("node heartbeat failed: %s", error)

    # ---- watch -------------------------------------------------------------------------------
    def watch_forever(self) -> None:
        while not self.stopping.is_set():
            try:
                listing = self.api.get("/api/v1/pods")
                with self.lock:
                    self.pods = {p["metadata"]["uid"]: p for p in listing.get("items", [])}
                self.wake.set()
                rv = listing["metadata"]["resourceVersion"]
                while not self.stopping.is_set():
                    for event in self.api.watch("/api/v1/pods", rv):
                        obj = event.get("object", {})
                        if event["type"] == "ERROR":
                            raise ApiError(obj.get("code", 500), json.dumps(obj))
                        rv = obj.get("metadata", {}).get("resourceVersion", rv)
                        if event["type"] == "BOOKMARK":
                            continue
                        uid = obj["metadata"]["uid"]
                        with self.lock:
                            if event["type"] == "DELETED":
                                self.pods.pop(uid, None)
                            else:
                                self.pods[uid] = obj
                        self.wake.set()
            except (httpx.HTTPError, ApiError, ValueError, KeyError) as error:
                log.info("pod watch restarting: %s", error)
                self.stopping.wait(0.5)

    # ---- main loop ---------------------------------------------------------------------------
    def run(self) -> None:
        while True:
            try:
                self.register_node()
                break
            except (httpx.HTTPError, ApiError) as error:
                log.warning("node registration failed, retrying: %s", error)
                time.sleep(0.5)
        threading.Thread(target=self.watch_forever, daemon=True, name="watch").start()
        threading.Thread(target=self.heartbeat_forever, daemon=True, name="heartbeat").start()
        while not self.stopping.is_set():
            self.wake.wait(0.2)
            self.wake.clear()
            with self.lock:
                pods = dict(self.pods)
            for pod in pods.values():
                try:
                    self.reconcile(pod)
                except (httpx.HTTPError, ApiError) as error:
                    log.warning("pod %s/%s: %s", pod["metadata"]["namespace"], pod["metadata"]["name"], error)
            for uid in list(self.runs):
                if uid not in pods:
                    self.forget(uid)  # force-deleted: make sure nothing keeps running
        for uid in list(self.runs):
            self.forget(uid)

    def shutdown(self, *_: Any) -> None:
        self.stopping.set()
        self.wake.set()

    def forget(self, uid: str) -> None:
        run = self.runs.pop(uid, None)
        if run:
            self.kill(run, grace=0)

    # ---- reconcile one pod ---------------------------------------------------------------------
    def reconcile(self, pod: Obj) -> None:
        meta, spec, status = pod["metadata"], pod["spec"], pod.get("status", {})
        uid = meta["uid"]
        if not spec.get("nodeName"):
            if meta.get("deletionTimestamp") is None and self._fits(spec):
                self.bind(pod)
            return
        if spec["nodeName"] != self.node_name:
            return
        run = self.runs.get(uid)
        if meta.get("deletionTimestamp"):
            self.finish_deletion(pod, run)
            return
        if status.get("phase") in ("Succeeded", "Failed") and run is None:
            return
        if run is None:
            run = self.start_pod(pod)
        self.advance(pod, run)

    def _fits(self, spec: Obj) -> bool:
        """Bind only pods whose nodeSelector this node satisfies, as the scheduler would."""
        if spec.get("schedulerName", "default-scheduler") != "default-scheduler":
            return False
        selector: dict[str, str] = spec.get("nodeSelector") or {}
        return all(self.node_labels.get(k) == v for k, v in selector.items())

    def bind(self, pod: Obj) -> None:
        meta = pod["metadata"]
        body = {"apiVersion": "v1", "kind": "Binding",
                "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"]},
                "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name}}
        try:
            self.api.request("POST", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/binding", body)
        except ApiError as error:
            if error.status not in (404, 409):
                raise

    # ---- starting ----------------------------------------------------------------------------
    def start_pod(self, pod: Obj) -> PodRun:
        meta = pod["metadata"]
        root = self.workdir / f"{meta['namespace']}_{meta['name']}_{meta['uid'][:8]}"
        root.mkdir(parents=True, exist_ok=True)
        run = PodRun(uid=meta["uid"], namespace=meta["namespace"], name=meta["name"], root=root)
        for container in pod["spec"]["containers"]:
            run.containers[container["name"]] = ContainerRun(
                name=container["name"], spec=container,
                log_path=root / f"{container['name']}.log", term_path=root / f"{container['name']}.termination-log",
            )
        self.runs[run.uid] = run
        try:
            volumes = self.materialise_volumes(pod, root / "volumes")
            for container in run.containers.values():
                self.start_container(pod, run, container, volumes)
            run.config_error = None
        except ConfigError as error:
            run.config_error = str(error)
            self.runs.pop(run.uid)
            self.report_waiting(pod, run, "CreateContainerConfigError", str(error))
            return run
        return run

    def materialise_volumes(self, pod: Obj, base: Path) -> dict[str, Path]:
        ns = pod["metadata"]["namespace"]
        paths: dict[str, Path] = {}
        for volume in pod["spec"].get("volumes", []):
            target = base / volume["name"]
            target.mkdir(parents=True, exist_ok=True)
            if "emptyDir" in volume or "ephemeral" in volume:
                pass
            elif "secret" in volume:
                src = volume["secret"]
                self._write_items(target, self._secret_data(ns, src["secretName"], src.get("optional", False)),
                                  src.get("items"))
            elif "configMap" in volume:
                src = volume["configMap"]
                self._write_items(target, self._configmap_data(ns, src["name"], src.get("optional", False)),
                                  src.get("items"))
            elif "projected" in volume:
                for source in volume["projected"].get("sources", []):
                    self._write_projection(pod, target, source)
            elif "downwardAPI" in volume:
                self._write_projection(pod, target, {"downwardAPI": volume["downwardAPI"]})
            else:
                raise ConfigError(f"volume {volume['name']!r}: this type is not supported by the pod runner")
            paths[volume["name"]] = target
        return paths

    def _secret_data(self, ns: str, name: str, optional: bool) -> dict[str, bytes]:
        try:
            secret = self.api.get(f"/api/v1/namespaces/{ns}/secrets/{name}")
        except ApiError as error:
            if error.status == 404:
                if optional:
                    return {}
                raise ConfigError(f'secret "{name}" not found') from error
            raise
        return {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}

    def _configmap_data(self, ns: str, name: str, optional: bool) -> dict[str, bytes]:
        try:
            cm = self.api.get(f"/api/v1/namespaces/{ns}/configmaps/{name}")
        except ApiError as error:
            if error.status == 404:
                if optional:
                    return {}
                raise ConfigError(f'configmap "{name}" not found') from error
            raise
        data = {k: v.encode() for k, v in (cm.get("data") or {}).items()}
        data |= {k: base64.b64decode(v) for k, v in (cm.get("binaryData") or {}).items()}
        return data

    @staticmethod
    def _write_items(target: Path, data: dict[str, bytes], items: list[Obj] | None) -> None:
        chosen = [(i["key"], i["path"]) for i in items] if items else [(k, k) for k in data]
        for key, rel in chosen:
            if key not in data:
                raise ConfigError(f"key {key!r} not found")
            path = target / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data[key])

    def _write_projection(self, pod: Obj, target: Path, source: Obj) -> None:
        meta, ns = pod["metadata"], pod["metadata"]["namespace"]
        if "serviceAccountToken" in source:
            sat = source["serviceAccountToken"]
            request: Obj = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                       "spec": {"expirationSeconds": sat.get("expirationSeconds", 3600),
                                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod",
                                                   "name": meta["name"], "uid": meta["uid"]}}}
            if sat.get("audience"):
                request["spec"]["audiences"] = [sat["audience"]]
            sa = pod["spec"].get("serviceAccountName", "default")
            token = self.api.request("POST", f"/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token", request)
            (target / sat["path"]).write_text(token["status"]["token"])
        elif "configMap" in source:
            src = source["configMap"]
            self._write_items(target, self._configmap_data(ns, src["name"], src.get("optional", False)),
                              src.get("items"))
        elif "secret" in source:
            src = source["secret"]
            self._write_items(target, self._secret_data(ns, src["name"], src.get("optional", False)),
                              src.get("items"))
        elif "downwardAPI" in source:
            for item in source["downwardAPI"].get("items", []):
                if "fieldRef" not in item:
                    raise ConfigError("downwardAPI resourceFieldRef is not supported by the pod runner")
                (target / item["path"]).write_text(self._field(pod, item["fieldRef"]["fieldPath"]))

    @staticmethod
    def _field(pod: Obj, path: str) -> str:
        meta = pod["metadata"]
        simple = {
            "metadata.name": meta["name"], "metadata.namespace": meta["namespace"],
            "metadata.uid": meta["uid"], "spec.nodeName": pod["spec"].get("nodeName", ""),
            "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
            "status.podIP": "127.0.0.1", "status.hostIP": "127.0.0.1",
        }
        if path in simple:
            return str(simple[path])
        match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if match:
            return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
        raise ConfigError(f"fieldRef {path!r} is not supported by the pod runner")

    def container_env(self, pod: Obj, container: Obj) -> dict[str, str]:
        ns = pod["metadata"]["namespace"]
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": "/tmp",
            "LANG": "C.UTF-8",
            "HOSTNAME": pod["metadata"]["name"],
            "KUBERNETES_SERVICE_HOST": self.api_host,
            "KUBERNETES_SERVICE_PORT": str(self.api_port),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(self.api_port),
        }
        for source in container.get("envFrom", []):
            prefix = source.get("prefix", "")
            if "secretRef" in source:
                data = self._secret_data(ns, source["secretRef"]["name"], source["secretRef"].get("optional", False))
            else:
                ref = source["configMapRef"]
                data = self._configmap_data(ns, ref["name"], ref.get("optional", False))
            env |= {prefix + k: v.decode() for k, v in data.items()}
        for var in container.get("env", []):
            if "valueFrom" not in var:
                env[var["name"]] = _expand(var.get("value", ""), env)
                continue
            source = var["valueFrom"]
            if "secretKeyRef" in source or "configMapKeyRef" in source:
                ref = source.get("secretKeyRef") or source["configMapKeyRef"]
                getter = self._secret_data if "secretKeyRef" in source else self._configmap_data
                data = getter(ns, ref["name"], ref.get("optional", False))
                if ref["key"] in data:
                    env[var["name"]] = data[ref["key"]].decode()
                elif not ref.get("optional", False):
                    raise ConfigError(f"couldn't find key {ref['key']} in {ref['name']}")
            elif "fieldRef" in source:
                env[var["name"]] = self._field(pod, source["fieldRef"]["fieldPath"])
            else:
                raise ConfigError(f"env {var['name']}: this valueFrom is not supported by the pod runner")
        return env

    def _argv(self, container: Obj, env: dict[str, str]) -> list[str]:
        command = list(container.get("command") or [])
        if not command:
            image = container.get("image", "")
            for prefix, program in self.entrypoints.items():
                if image.startswith(prefix):
                    command = list(program)
                    break
            else:
                raise ConfigError(
                    f"container {container['name']!r} has no command and the runner knows no entrypoint "
                    f"for image {image!r} (see --image-entrypoint)"
                )
        argv = [_expand(a, env) for a in command + list(container.get("args") or [])]
        if shutil.which(argv[0], path=env["PATH"]) is None and not Path(argv[0]).is_file():
            raise ConfigError(f"executable {argv[0]!r} not found on the runner's PATH")
        return argv

    def start_container(self, pod: Obj, run: PodRun, container: ContainerRun, volumes: dict[str, Path]) -> None:
        spec = container.spec
        env = self.container_env(pod, spec)
        argv = self._argv(spec, env)
        mounts: list[tuple[Path, str, bool]] = []
        for mount in spec.get("volumeMounts", []):
            src = volumes.get(mount["name"])
            if src is None:
                raise ConfigError(f"volumeMount {mount['name']!r} names no volume")
            if mount.get("subPath"):
                src = src / mount["subPath"]
            mounts.append((src, mount["mountPath"], bool(mount.get("readOnly"))))
        container.term_path.write_bytes(b"")
        term_target = spec.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH
        mounts.append((container.term_path, term_target, False))
        script = ["set -e"]
        for src, dst, read_only in mounts:
            qd, qs = shlex.quote(dst), shlex.quote(str(src))
            if src.is_dir():
                script.append(f"mkdir -p {qd}")
            else:
                script.append(f"mkdir -p $(dirname {qd}); [ -e {qd} ] || : > {qd}")
            script.append(f"mount --bind {qs} {qd}")
            if read_only:
                script.append(f"mount -o remount,bind,ro {qd}")
        workdir = spec.get("workingDir")
        if workdir:
            script.append(f"cd {shlex.quote(workdir)}")
        script.append('exec "$@"')
        with open(container.log_path, "ab") as out:
            container.proc = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", "\n".join(script), "sh", *argv],
                env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, cwd=run.root,
            )
        container.started_at = now_iso()
        container.terminated = None
        log.info("started %s/%s[%s] pid %d: %s", run.namespace, run.name, container.name,
                 container.proc.pid, shlex.join(argv))

    # ---- progress ----------------------------------------------------------------------------
    def advance(self, pod: Obj, run: PodRun) -> None:
        policy = pod["spec"].get("restartPolicy", "Always")
        deadline = pod["spec"].get("activeDeadlineSeconds")
        if deadline is not None and run.final_phase is None:
            elapsed = (dt.datetime.now(dt.UTC) - parse_iso(run.start_time)).total_seconds()
            if elapsed > deadline:
                run.deadline_exceeded = True
                self.kill(run, grace=pod["spec"].get("terminationGracePeriodSeconds", 30))
        for container in run.containers.values():
            if container.proc is not None and container.terminated is None:
                code = container.proc.poll()
                if code is not None:
                    container.terminated = self._terminated(container, code)
                    container.proc = None
            if (container.terminated is not None and run.final_phase is None and not run.deadline_exceeded
                    and not run.killed):
                code = container.terminated["exitCode"]
                if policy == "Always" or (policy == "OnFailure" and code != 0):
                    self._restart(pod, run, container)
        if run.final_phase is None and all(c.terminated for c in run.containers.values()):
            if run.deadline_exceeded or any(c.terminated and c.terminated["exitCode"] != 0
                                            for c in run.containers.values()):
                run.final_phase = "Failed"
            else:
                run.final_phase = "Succeeded"
        self.report(pod, run)

    def _restart(self, pod: Obj, run: PodRun, container: ContainerRun) -> None:
        now = time.monotonic()
        if container.next_start == 0.0:
            container.next_start = now + min(10 * 2 ** container.restart_count, 300)
            return
        if now < container.next_start:
            return
        container.next_start = 0.0
        container.restart_count += 1
        volumes = {v["name"]: run.root / "volumes" / v["name"] for v in pod["spec"].get("volumes", [])}
        try:
            self.start_container(pod, run, container, volumes)
        except ConfigError as error:
            log.warning("restart of %s/%s failed: %s", run.name, container.name, error)

    def _terminated(self, container: ContainerRun, code: int) -> Obj:
        if code < 0:  # killed by a signal: report as a runtime would (128 + signal)
            code = 128 - code
        message = container.term_path.read_bytes()[:TERMINATION_MESSAGE_LIMIT].decode(errors="replace")
        policy = container.spec.get("terminationMessagePolicy", "File")
        if not message and code != 0 and policy == "FallbackToLogsOnError":
            tail = container.log_path.read_bytes()[-FALLBACK_LOG_LIMIT:]
            message = tail.decode(errors="replace")
        state: Obj = {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                      "startedAt": container.started_at, "finishedAt": now_iso()}
        if message:
            state["message"] = message
        return state

    def kill(self, run: PodRun, grace: float) -> None:
        run.killed = True
        procs = [c.proc for c in run.containers.values() if c.proc is not None]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM if grace > 0 else signal.SIGKILL)
        deadline = time.monotonic() + min(grace, 10)
        for proc in procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for container in run.containers.values():
            if container.proc is not None:
                container.terminated = self._terminated(container, container.proc.returncode)
                container.proc = None

    def finish_deletion(self, pod: Obj, run: PodRun | None) -> None:
        meta = pod["metadata"]
        if run is not None:
            self.kill(run, grace=meta.get("deletionGracePeriodSeconds") or 0)
            if run.final_phase is None:
                run.final_phase = "Failed" if any(
                    c.terminated is None or c.terminated["exitCode"] != 0 for c in run.containers.values()
                ) else "Succeeded"
            self.report(pod, run)
            self.runs.pop(run.uid, None)
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0,
                "preconditions": {"uid": meta["uid"]}}
        if meta.get("finalizers"):
            return  # someone else (e.g. the Job controller) still has to let go; deleted later
        try:
            self.api.request("DELETE", path, body)
        except ApiError as error:
            if error.status not in (404, 409):
                raise

    # ---- status ------------------------------------------------------------------------------
    def report_waiting(self, pod: Obj, run: PodRun, reason: str, message: str) -> None:
        statuses = [{"name": c.name, "ready": False, "restartCount": 0, "image": c.spec.get("image", ""),
                     "imageID": "", "started": False,
                     "state": {"waiting": {"reason": reason, "message": message}}}
                    for c in run.containers.values()]
        key = json.dumps(["waiting", reason, message])
        if run.reported == key:
            return
        self._patch_status(pod, {"phase": "Pending", "hostIP": "127.0.0.1", "startTime": run.start_time,
                                 "containerStatuses": statuses})
        run.reported = key

    def report(self, pod: Obj, run: PodRun) -> None:
        statuses = []
        for c in run.containers.values():
            status: Obj = {"name": c.name, "image": c.spec.get("image", ""), "imageID": "",
                           "containerID": f"devstack://{run.uid[:8]}-{c.name}-{c.restart_count}",
                           "restartCount": c.restart_count}
            if c.terminated is not None:
                status |= {"ready": False, "started": False, "state": {"terminated": c.terminated}}
            else:
                status |= {"ready": True, "started": True, "state": {"running": {"startedAt": c.started_at}}}
            statuses.append(status)
        phase = run.final_phase or "Running"
        all_ready = phase == "Running" and all(s["ready"] for s in statuses)
        key = json.dumps([phase, [(s["state"], s["restartCount"]) for s in statuses]], sort_keys=True)
        if run.reported == key:
            return
        now = now_iso()

        def condition(kind: str, ok: bool, reason: str | None = None) -> Obj:
            cond: Obj = {"type": kind, "status": "True" if ok else "False", "lastTransitionTime": now,
                         "lastProbeTime": None}
            if reason:
                cond["reason"] = reason
            return cond

        done_reason = "PodCompleted" if phase in ("Succeeded", "Failed") else None
        body: Obj = {
            "phase": phase, "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}], "startTime": run.start_time,
            "containerStatuses": statuses,
            "conditions": [
                condition("PodScheduled", True), condition("Initialized", True, done_reason),
                condition("ContainersReady", all_ready, done_reason), condition("Ready", all_ready, done_reason),
            ],
        }
        if run.deadline_exceeded:
            body |= {"reason": "DeadlineExceeded",
                     "message": "Pod was active on the node longer than the specified deadline"}
        self._patch_status(pod, body)
        run.reported = key
        if run.final_phase:
            log.info("pod %s/%s %s", run.namespace, run.name, run.final_phase)

    def _patch_status(self, pod: Obj, status: Obj) -> None:
        meta = pod["metadata"]
        self.api.merge_patch(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status",
                             {"metadata": {"uid": meta["uid"]}, "status": status})


class ConfigError(Exception):
    """The pod cannot start yet (a missing secret, an unsupported field); reported as waiting."""


def _expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion; ``$$(VAR)`` escapes it."""
    def sub(match: re.Match[str]) -> str:
        if match.group(0).startswith("$$"):
            return match.group(0)[1:]
        return env.get(match.group(1), match.group(0))
    return re.sub(r"\$?\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", sub, value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--dir", type=Path, required=True, help="where pod volumes and logs go")
    parser.add_argument("--node-name", default="devstack-node")
    parser.add_argument("--node-label", action="append", default=[], help="KEY=VALUE, repeatable")
    parser.add_argument("--image-entrypoint", action="append", default=[],
                        help="IMAGE_PREFIX=PROGRAM: what runs for a container of that image with no command")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    labels = dict(item.split("=", 1) for item in args.node_label)
    entrypoints = {k: shlex.split(v) for k, v in (item.split("=", 1) for item in args.image_entrypoint)}
    runner = PodRunner(Api(args.server, args.ca, args.cert, args.key), args.node_name, args.dir, labels, entrypoints)
    signal.signal(signal.SIGTERM, runner.shutdown)
    signal.signal(signal.SIGINT, runner.shutdown)
    runner.run()


if __name__ == "__main__":
    main()
