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
import logging
from typing import Any

import kopf
from prometheus_client import start_http_server

from controller import builders
from controller.comm100 import Comm100Client
from controller.kube import FILESCAN_PLURAL, GROUP, VERSION, KubeClient
from controller.logs import configure_logging
from controller.reconciler import Reconciler
from controller.settings import Settings, load_settings

log = logging.getLogger("filescan.operator")

PEERING_NAME = "filescan-operator"


class _Runtime:
    """What the handlers share, kept in kopf's memo."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.reconciler: Reconciler | None = None
        self.lock = asyncio.Lock()

    async def reconciler_ready(self) -> Reconciler:
        if self.reconciler is None:
            async with self.lock:
                if self.reconciler is None:
                    kube = KubeClient.from_environment(timeout=10.0)
                    comm100 = Comm100Client(self.settings.comm100)
                    reconciler = Reconciler(self.settings, kube, comm100)
                    await reconciler.start()
                    self.reconciler = reconciler
                    log.info("reconciler started in namespace %s", self.settings.operator.namespace)
        return self.reconciler

    async def close(self) -> None:
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
    kopf.run(
        namespaces=[settings.operator.namespace],
        standalone=args.standalone,
        priority=args.priority,
        liveness_endpoint=f"http://{args.health_host}:{args.health_port}/healthz",
        memo=kopf.Memo(runtime=_Runtime(settings)),
    )
    return 0
