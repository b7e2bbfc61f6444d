"""What every long-running process sets up to be seen: probes, heartbeats, a local record."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from pipelines.observe import local
from pipelines.observe.heartbeats import Beat, Heartbeater, HeartbeatStore, blaze_version
from pipelines.observe.probes import Check, ProbeServer, Readiness
from pipelines.settings import BlazeSettings

log = logging.getLogger(__name__)


def process_id(detail: str = "") -> str:
    """``{host}:{pid}`` (plus a detail such as the device): unique per running process."""
    base = f"{socket.gethostname()}:{os.getpid()}"
    return f"{base}:{detail}" if detail else base


class ProcessObserver:
    """Serves ``/metrics``, ``/livez``, ``/readyz``; beats into Redis; records its address.

    Args:
        settings: Blaze settings (heartbeat interval, metrics host, run directory).
        role: ``worker``, ``consumer`` or ``gateway``.
        proc_id: This process's id (see ``process_id``).
        registry: Its metrics.
        checks: Readiness checks by name.
        info: Called at every beat for what the role adds (device, models, current batch).
        port: Probe port; 0 picks a free one; None serves nothing (heartbeats still go).
        url: Where the process serves its probes itself (the gateway, on its own port).
    """

    def __init__(
        self,
        settings: BlazeSettings,
        role: str,
        proc_id: str,
        registry: CollectorRegistry,
        checks: Mapping[str, Check],
        info: Callable[[], dict[str, Any]] = dict,
        port: int | None = 0,
        url: str = "",
    ) -> None:
        self.settings = settings
        self.role = role
        self.id = proc_id
        self.info = info
        self.readiness = Readiness(checks)
        self.server: ProbeServer | None = None
        if port is not None:
            self.server = ProbeServer(
                registry,
                self.readiness,
                settings.observe.metrics_host,
                port,
                {"role": role, "id": proc_id, "version": blaze_version()},
            )
        self.store = HeartbeatStore(settings)
        self.beats = Heartbeater(self.store, self._beat, settings.observe.heartbeat_s)
        self._record: Path | None = None
        self.url = self.server.url if self.server else url
        self._started = Beat(role=role, id=proc_id, url=self.url)

    def _beat(self) -> Beat:
        return replace(self._started, info=self.info())

    def start(self) -> ProcessObserver:
        if self.server is not None:
            self.server.start()
        if self.url:
            self._record = local.record(self.settings.observe.run_dir, self.role, self.id, self.url)
            log.info("%s %s: /metrics, /livez, /readyz on %s", self.role, self.id, self.url)
        self.beats.start()
        return self

    def stop(self) -> None:
        self.beats.stop()
        self.store.close()
        if self.server is not None:
            self.server.close()
        self.readiness.close()
        if self._record is not None:
            self._record.unlink(missing_ok=True)
