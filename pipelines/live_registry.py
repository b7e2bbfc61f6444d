"""The registry every node shares: versions and aliases from the version store, the registry
file as the seed, changes picked up within ``refresh_s`` without a restart.

``VersionedRegistry`` answers ``name``, ``name@alias`` and ``name@N`` and routes jobs (split,
shadow); ``LiveRegistry`` is one that keeps itself current, what the consumer, the workers and
the gateway hold. Where the store cannot be reached at start, the file alone is served (and a
warning says so) until it can.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from functools import partial

from pipelines.cache_keys import weights_digest
from pipelines.errors import ConfigError, ServiceUnavailable
from pipelines.registry import ModelSpec, Registry, Routed, load_registry
from pipelines.settings import BlazeSettings
from pipelines.stores.versions import VersionStore
from pipelines.versions import (
    STABLE,
    ModelRecord,
    parse_ref,
    resolve,
    seeded,
    shadow_of,
)

log = logging.getLogger(__name__)
REREAD_S = 2.0


class VersionedRegistry(Registry):
    """Models with versions: ``get`` takes ``name`` (its ``stable`` version), ``name@alias``
    and ``name@N``; models of the file without a record have no versions."""

    def __init__(self, specs: dict[str, ModelSpec], records: dict[str, ModelRecord]) -> None:
        super().__init__({})
        self._set(specs, records)

    def _set(self, specs: dict[str, ModelSpec], records: dict[str, ModelRecord]) -> None:
        merged = dict(specs)
        for name, record in records.items():
            stable = record.version(STABLE)
            if stable is not None:
                merged[name] = stable.spec
        self.specs, self.records = merged, dict(records)

    def get(self, name: str) -> ModelSpec | None:
        if "@" not in name:
            return self.specs.get(name)
        try:
            base, at = parse_ref(name)
        except ConfigError:
            return None
        record = self.records.get(base)
        found = None if record is None or at is None else record.version(at)
        return None if found is None else found.spec

    def route(self, ref: str, job_id: str) -> Routed | None:
        try:
            name, at = parse_ref(ref)
        except ConfigError:
            return None
        record = self.records.get(name)
        if record is None:
            return super().route(ref, job_id) if at is None else None
        number = resolve(record, at, job_id)
        if number is None:
            return None
        shadow = shadow_of(record, at, job_id)
        return Routed(
            f"{name}@{number}",
            record.versions[number].spec,
            number,
            None if shadow is None or shadow == number else f"{name}@{shadow}",
        )


def _seed_one(record: ModelRecord | None, spec: ModelSpec, digest: str | None) -> ModelRecord:
    return seeded(record, spec, digest)


class LiveRegistry(VersionedRegistry):
    """A ``VersionedRegistry`` that seeds the store from the registry file once and rereads
    the store whenever its revision moved (looked at most every ``refresh_s``)."""

    def __init__(
        self,
        settings: BlazeSettings,
        store: VersionStore | None,
        *,
        refresh_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.store = store
        self.refresh_s = refresh_s
        self.clock = clock
        self.file = load_registry(settings)
        self._rev: int | None = None
        self._seeded = False
        self._checked = float("-inf")
        self._reread_at = float("-inf")
        self._lock = threading.Lock()
        super().__init__(self.file.specs, {})
        self.refresh(force=True)

    def _seed(self) -> None:
        assert self.store is not None
        for spec in self.file.specs.values():
            digest = spec.digest or weights_digest(self.settings, spec)
            self.store.change(spec.name, partial(_seed_one, spec=spec, digest=digest))
        self._seeded = True

    def refresh(self, force: bool = False) -> None:
        """Reread the store if its revision moved (now, with ``force``)."""
        if self.store is None:
            return
        now = self.clock()
        if not force and now - self._checked < self.refresh_s:
            return
        with self._lock:
            self._checked = now
            try:
                if not self._seeded:
                    self._seed()
                rev = self.store.revision()
                if rev == self._rev:
                    return
                records = self.store.load()
            except ServiceUnavailable as exc:
                log.warning("model versions unavailable, serving the registry file: %s", exc)
                return
            self._set(self.file.specs, records)
            if self._rev is not None:
                log.info("model registry changed (revision %d): %s", rev, self.aliases())
            self._rev = rev

    def aliases(self) -> dict[str, dict[str, int]]:
        return {n: dict(r.aliases) for n, r in sorted(self.records.items())}

    def get(self, name: str) -> ModelSpec | None:
        self.refresh()
        found = super().get(name)
        if found is None and self._reread():  # a version added, a folder made a moment ago
            found = super().get(name)
        return found

    def _reread(self) -> bool:
        """Read the file and the store again (at most every ``REREAD_S``): whether it did."""
        now = self.clock()
        if now - self._reread_at < REREAD_S:
            return False
        self._reread_at = now
        self.file = load_registry(self.settings)
        self._seeded = False
        self._set(self.file.specs, self.records)
        self.refresh(force=True)
        return True

    def route(self, ref: str, job_id: str) -> Routed | None:
        self.refresh()
        return super().route(ref, job_id)

    def names(self) -> list[str]:
        self.refresh()
        return super().names()
