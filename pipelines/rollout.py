"""Rolling models out: add versions, move aliases, roll back, split traffic, shadow, compare.

Every change is one atomic change of the model's record in the shared store (so it reaches
every consumer and worker within their refresh, ~1 s, without a restart) and one audit entry,
kept with the records and published to ``{namespace}.audit`` where the gateway made that topic.
Jobs already dispatched finish on the version they were given; new ones take the new target.
"""

from __future__ import annotations

import json
import logging
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaConsumer
from kafka.errors import KafkaError

from pipelines.cache_keys import weights_digest
from pipelines.errors import ConfigError, NotFound
from pipelines.kafka import make_producer
from pipelines.registry import ModelSpec, load_registry
from pipelines.results import LLMResult, parse_result
from pipelines.settings import BlazeSettings
from pipelines.stores.batch_results import read_results
from pipelines.stores.results import ResultStore
from pipelines.stores.status import StatusStore
from pipelines.stores.versions import VersionStore
from pipelines.versions import (
    STABLE,
    ModelRecord,
    Shadow,
    Split,
    added,
    promoted,
    rolled_back,
    seeded,
)

log = logging.getLogger(__name__)


class Rollout:
    """Changes to model records, each audited.

    Args:
        actor: Who makes the changes (recorded in the audit trail).
        publish: Where audit entries also go (default: the audit topic, if it exists).
    """

    def __init__(
        self,
        settings: BlazeSettings,
        store: VersionStore,
        *,
        actor: str = "cli",
        publish: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.actor = actor
        self.publish = publish or (lambda entry: publish_audit(settings, entry))

    def record(self, name: str) -> ModelRecord:
        """The model's record; a model of the registry file without one gets it now."""
        found = self.store.load().get(name)
        if found is not None:
            return found
        spec = load_registry(self.settings).get(name)
        if spec is None:
            known = ", ".join(sorted(self.store.load()) or load_registry(self.settings).names())
            raise NotFound(f"unknown model {name!r} (known: {known})")
        return self.store.change(name, lambda rec: seeded(rec, spec, self._digest(spec)))

    def _digest(self, spec: ModelSpec) -> str | None:
        return spec.digest or weights_digest(self.settings, spec)

    def _change(
        self, name: str, action: str, fn: Callable[[ModelRecord], ModelRecord], **what: Any
    ) -> ModelRecord:
        self.record(name)

        def apply(rec: ModelRecord | None) -> ModelRecord:
            if rec is None:
                raise NotFound(f"unknown model {name!r}")
            return fn(rec)

        after = self.store.change(name, apply)
        entry = {"model": name, "action": action, "actor": self.actor, **what}
        entry["aliases"] = dict(after.aliases)
        self.store.audit(entry)
        self.publish(entry)
        return after

    def add_version(
        self, name: str, changes: dict[str, Any], note: str = "", base: int | None = None
    ) -> ModelRecord:
        """A new version: the ``base`` version's entry (default: ``stable``'s) with ``changes``."""
        record = self.record(name)
        start = record.versions.get(base) if base is not None else record.version(STABLE)
        if start is None:
            raise ConfigError(f"model {name!r} has no version {base}")
        fields = {**start.spec.model_dump(exclude={"name"}), **changes, "name": name}
        if "source" in changes and "digest" not in changes:
            fields["digest"] = None
        try:
            spec = ModelSpec.model_validate(fields)
        except ValueError as exc:
            raise ConfigError(f"model {name!r}: new version: {exc}") from None
        digest = self._digest(spec)
        return self._change(
            name,
            "add-version",
            lambda rec: added(rec, spec, digest, note),
            changes=changes,
            note=note,
        )

    def promote(self, name: str, version: int, alias: str = STABLE) -> ModelRecord:
        return self._change(
            name, "promote", lambda rec: promoted(rec, version, alias), version=version, alias=alias
        )

    def rollback(self, name: str, alias: str = STABLE) -> ModelRecord:
        return self._change(name, "rollback", lambda rec: rolled_back(rec, alias), alias=alias)

    def split(self, name: str, version: int | None, percent: float = 0) -> ModelRecord:
        """Send ``percent`` of the model's jobs to ``version`` (None: end the split)."""
        new = None if version is None else _valid(Split, version=version, percent=percent)
        return self._set(name, "split", new, percent=percent)

    def shadow(self, name: str, version: int | None, sample: float = 1.0) -> ModelRecord:
        """Run a ``sample`` of the model's jobs on ``version`` too (None: stop)."""
        new = None if version is None else _valid(Shadow, version=version, sample=sample)
        return self._set(name, "shadow", new, sample=sample)

    def _set(self, name: str, what: str, new: Split | Shadow | None, **more: Any) -> ModelRecord:
        def apply(rec: ModelRecord) -> ModelRecord:
            if new is not None and new.version not in rec.versions:
                raise ConfigError(f"model {name!r} has no version {new.version}")
            return rec.model_copy(update={what: new})

        version = None if new is None else new.version
        return self._change(name, what, apply, version=version, **more)


def _valid(cls: type[Split] | type[Shadow], **fields: Any) -> Any:
    try:
        return cls.model_validate(fields)
    except ValueError as exc:
        raise ConfigError(str(exc).splitlines()[-1] if str(exc) else "invalid") from None


def publish_audit(settings: BlazeSettings, entry: dict[str, Any]) -> None:
    """Send an audit entry to ``{namespace}.audit`` if that topic exists (the gateway makes it)."""
    topic = f"{settings.namespace}.audit"
    try:
        # the cluster's topic list from a bare consumer (KafkaAdminClient.list_topics fails
        # on the embedded broker's ACL answer)
        probe = KafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap, **settings.kafka.client_config()
        )
        try:
            if topic not in probe.topics():
                return
        finally:
            probe.close()
        producer = make_producer(settings, acks=1)
        try:
            producer.send(topic, key=b"models", value=json.dumps(entry).encode())
            producer.flush(10)
        finally:
            producer.close(timeout=10)
    except KafkaError as exc:
        log.warning("audit entry not published to %s: %s", topic, exc)


@dataclass
class Comparison:
    """Shadow pairs of one model: how often the texts agree and each side's latency."""

    model: str
    pairs: int = 0
    agree: int = 0
    versions: dict[str, int] = field(default_factory=dict)
    live_compute_s: list[float] = field(default_factory=list)
    shadow_compute_s: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        def p(xs: list[float], q: float) -> float | None:
            return None if not xs else round(sorted(xs)[int(q * (len(xs) - 1))], 4)

        return {
            "model": self.model,
            "pairs": self.pairs,
            "agreement": round(self.agree / self.pairs, 4) if self.pairs else None,
            "shadow_versions": self.versions,
            "live_compute_s": {
                "p50": p(self.live_compute_s, 0.5),
                "p95": p(self.live_compute_s, 0.95),
            },
            "shadow_compute_s": {
                "p50": p(self.shadow_compute_s, 0.5),
                "p95": p(self.shadow_compute_s, 0.95),
            },
            "live_mean_s": round(statistics.fmean(self.live_compute_s), 4)
            if self.live_compute_s
            else None,
            "shadow_mean_s": round(statistics.fmean(self.shadow_compute_s), 4)
            if self.shadow_compute_s
            else None,
        }


def compare(
    settings: BlazeSettings, results: ResultStore, status: StatusStore, name: str
) -> Comparison:
    """Every shadow result of ``name`` beside the job's own: agreement of texts (LLM jobs;
    others agree when their outputs are equal) and compute seconds of each side."""
    out = Comparison(name)
    root = f"{settings.namespace}/shadow/"
    keys = [k for k in results.list_keys(root) if k[len(root) :].split("@", 1)[0] == name]
    shadows = {k: v for k, v in results.get_many(keys).items() if v is not None}
    by_job = {k.rsplit("/", 1)[1].removesuffix(".json"): (k, v) for k, v in shadows.items()}
    live = read_results(settings, results, status, list(by_job))
    for job_id, (key, raw) in by_job.items():
        mine = live.get(job_id)
        if mine is None:
            continue
        a, b = parse_result(mine), parse_result(raw)
        if a.status != "succeeded" or b.status != "succeeded":
            continue
        ref = key[len(root) :].split("/", 1)[0]
        out.versions[ref] = out.versions.get(ref, 0) + 1
        out.pairs += 1
        if isinstance(a, LLMResult) and isinstance(b, LLMResult):
            out.agree += a.text == b.text
        else:
            out.agree += a.model_dump(include={"vectors", "images"}) == b.model_dump(
                include={"vectors", "images"}
            )
        out.live_compute_s.append(a.timings.get("compute_s", 0.0))
        out.shadow_compute_s.append(b.timings.get("compute_s", 0.0))
    return out
