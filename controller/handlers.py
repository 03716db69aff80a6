"""``filescan operator``: kopf wiring. The handlers only feed the reconciler's caches.

Design decisions:

* Only ``on.event`` handlers: kopf watches FileScans and our scan Jobs and hands every change to
  :class:`controller.reconciler.Reconciler`, which decides level-triggered. No create/update
  handlers means kopf writes no progress annotations, no diff-base and no finalizer on our
  objects (nothing bloats them, and deletion never waits for the operator); ownerReferences do
  the clean-up of Jobs and pods.
* The reconciler starts on the first event kopf delivers, not at start-up: kopf delivers nothing
  while peering keeps this replica on standby, so a standby stays idle until it takes over, and
  then lists everything before admitting a single scan.
* All kopf tuning lives in :func:`configure`, each setting with the reason for it.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import os
import secrets
import socket
from typing import Any, cast

import kopf
from prometheus_client import start_http_server

from controller import builders, policy
from controller.comm100 import Comm100Client
from controller.kube import FILESCAN_PLURAL, GROUP, VERSION, KubeClient, KubeError
from controller.logs import configure_logging
from controller.reconciler import Reconciler
from controller.settings import Settings, load_settings

log = logging.getLogger("filescan.operator")

PEERING_NAME = "filescan-operator"


class PeeringGate:
    """Mirrors kopf's peering decision for the reconciler's own loops.

    kopf pauses its watch streams when a replica of higher priority appears, but the reconciler's
    queue and admission loop run on their own; this gate reads the same KopfPeering record and
    stops them too, so two replicas never admit or report at once.
    """

    def __init__(self, kube: KubeClient, namespace: str, identity: str, priority: int, interval: float) -> None:
        self.kube, self.namespace, self.identity, self.priority = kube, namespace, identity, priority
        self.interval = interval
        self.active = True

    def __call__(self) -> bool:
        return self.active

    async def run(self) -> None:
        while True:
            try:
                record = await self.kube.get_kopf_peering(self.namespace, PEERING_NAME)
                active = policy.peering_allows(record.get("status") or {}, self.identity, self.priority,
                                               dt.datetime.now(dt.UTC))
                if active != self.active:
                    log.info("peering: this replica is now %s", "active" if active else "standing by")
                self.active = active
            except KubeError as error:
                log.warning("peering record unreadable, keeping the last decision: %s", error)
            await asyncio.sleep(self.interval)


class _Runtime:
    """What the handlers share, kept in kopf's memo."""

    def __init__(self, settings: Settings, identity: str, priority: int, standalone: bool) -> None:
        self.settings = settings
        self.identity = identity
        self.priority = priority
        self.standalone = standalone
        self.reconciler: Reconciler | None = None
        self.gate_task: asyncio.Task[None] | None = None
        self.lock = asyncio.Lock()

    async def reconciler_ready(self) -> Reconciler:
        if self.reconciler is None:
            async with self.lock:
                if self.reconciler is None:
                    kube = KubeClient.from_environment(timeout=10.0)
                    comm100 = Comm100Client(self.settings.comm100)
                    reconciler = Reconciler(self.settings, kube, comm100)
                    if not self.standalone:
                        lifetime = self.settings.operator.peering_lifetime.total_seconds()
                        gate = PeeringGate(kube, self.settings.operator.namespace, self.identity,
                                           self.priority, interval=min(2.0, max(0.5, lifetime / 4)))
                        reconciler.gate = gate
                        self.gate_task = asyncio.create_task(gate.run())
                        # kopf just made this replica active: give a replica it displaced one
                        # gate interval to see that and stop its own loops before ours start.
                        await asyncio.sleep(gate.interval * 1.5)
                    await reconciler.start()
                    self.reconciler = reconciler
                    log.info("reconciler started in namespace %s", self.settings.operator.namespace)
        return self.reconciler

    async def close(self) -> None:
        if self.gate_task is not None:
            self.gate_task.cancel()
        if self.reconciler is not None:
            await self.reconciler.stop()
            await self.reconciler.kube.aclose()
            await self.reconciler.comm100.aclose()


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    """Every kopf setting we change, and why."""
    # Our names, not kopf's, on anything kopf might write (we register no handler that does).
    settings.persistence.finalizer = f"{GROUP}/filescan-operator"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    # kopf would turn handler log lines into Kubernetes Events: we post our own, one per step.
    settings.posting.enabled = False
    # Peering: one active replica; a standby with a lower --priority takes over when it goes.
    # Naming it makes peering mandatory (kopf waits for the KopfPeering CRD rather than running
    # uncoordinated), so only when the operator was not started --standalone.
    if not settings.peering.standalone:
        settings.peering.name = PEERING_NAME
        settings.peering.mandatory = True
        lifetime = memo["runtime"].settings.operator.peering_lifetime
        settings.peering.lifetime = max(1, int(lifetime.total_seconds()))
    # Reconnect watches well before load balancers cut idle connections.
    settings.watching.server_timeout = 240
    settings.watching.client_timeout = 300
    settings.watching.connect_timeout = 10
    # Event handlers are quick (cache updates); no need to batch changes of one object.
    settings.batching.idle_timeout = 0.1
    settings.batching.batch_window = 0.05


@kopf.on.cleanup()
async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    runtime: _Runtime = memo["runtime"]
    await runtime.close()


@kopf.on.event(GROUP, VERSION, FILESCAN_PLURAL)
async def filescan_changed(type: str, body: kopf.Body, memo: Any, **_: Any) -> None:
    reconciler = await memo["runtime"].reconciler_ready()
    reconciler.observe_filescan(dict(body), deleted=type == "DELETED")


@kopf.on.event("batch", "v1", "jobs", labels={"app.kubernetes.io/managed-by": "filescan-operator"})
async def scan_job_changed(type: str, body: kopf.Body, memo: Any, **_: Any) -> None:
    if builders.FILESCAN_LABEL not in (body.get("metadata", {}).get("labels") or {}):
        return
    reconciler = await memo["runtime"].reconciler_ready()
    reconciler.observe_job(dict(body), deleted=type == "DELETED")


def main(args: argparse.Namespace) -> int:
    settings = load_settings()
    configure_logging()
    start_http_server(args.metrics_port, addr=args.health_host)
    # Our own identity for kopf's peering record, so the gate can find this replica in it.
    identity = os.environ.get("POD_ID") or f"filescan-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
    kopf.run(
        namespaces=[settings.operator.namespace],
        standalone=args.standalone,
        priority=args.priority,
        identity=cast(Any, identity),  # kopf's Identity is a NewType of str, not exported
        liveness_endpoint=f"http://{args.health_host}:{args.health_port}/healthz",
        memo=kopf.Memo(runtime=_Runtime(settings, identity, args.priority, args.standalone)),
    )
    return 0
