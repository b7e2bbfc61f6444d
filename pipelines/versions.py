"""Model versions and rollout: immutable versions, movable aliases, traffic splits, shadows.

A model name has numbered versions, each an immutable registry entry (source, options) with
its weights digest, and aliases that point at versions (``stable``, ``canary``, your own). A
job names a model (its ``stable`` alias), an alias (``name@canary``) or a version
(``name@3``). A model may send a percentage of the jobs that name it to a challenger version
(chosen by a hash of the job id, so a redelivered job lands on the same version) and run a
sample of them again on a shadow version, whose results are stored apart and never returned.

This module holds the records and the pure rules; ``pipelines.stores.versions_redis`` keeps
them where every node sees them, and ``pipelines.live_registry`` serves them to processes.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from pipelines.errors import ConfigError
from pipelines.registry import ModelSpec

STABLE = "stable"
AliasName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,39}$")]
_REF = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(@(?P<at>[A-Za-z0-9][A-Za-z0-9_-]*))?$")


class ModelVersion(BaseModel):
    """One immutable version of a model."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    number: int = Field(ge=1)
    spec: ModelSpec
    digest: str | None = None
    created_at: float = Field(default_factory=time.time)
    note: str = ""


class Split(BaseModel):
    """``percent`` of the jobs that name the model (not an alias or version) go to ``version``."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    version: int = Field(ge=1)
    percent: float = Field(gt=0, le=100)


class Shadow(BaseModel):
    """A ``sample`` (0-1) of the model's jobs also runs on ``version``; results kept apart."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    version: int = Field(ge=1)
    sample: float = Field(default=1.0, gt=0, le=1)


class ModelRecord(BaseModel):
    """Everything known about one model name: versions, aliases and their history, rollout."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    versions: dict[int, ModelVersion]
    aliases: dict[AliasName, int]
    history: dict[str, list[int]] = Field(default_factory=dict)
    """Per alias, the versions it pointed at before (most recent last): what rollback uses."""
    split: Split | None = None
    shadow: Shadow | None = None
    seeds: list[str] = Field(default_factory=list)
    """Hashes of the registry-file entries this record took versions from."""

    def to_json(self) -> str:
        return self.model_dump_json()

    @property
    def latest(self) -> int:
        return max(self.versions)

    def version(self, ref: str) -> ModelVersion | None:
        """The version an alias or number names, or None."""
        if ref.isdigit():
            return self.versions.get(int(ref))
        number = self.aliases.get(ref)
        return None if number is None else self.versions.get(number)


def parse_ref(ref: str) -> tuple[str, str | None]:
    """``name`` / ``name@alias`` / ``name@3`` → (name, the part after @ or None)."""
    m = _REF.match(ref)
    if m is None:
        raise ConfigError(f"{ref!r} is not NAME, NAME@ALIAS or NAME@VERSION")
    return m["name"], m["at"]


def spec_hash(spec: ModelSpec) -> str:
    """A registry entry's identity (its fields), to tell a changed file entry from one seen."""
    body = json.dumps(spec.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def bucket(job_id: str, salt: str = "") -> float:
    """A job's place in [0, 100), the same on every node and every delivery."""
    digest = hashlib.sha256(f"{salt}{job_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 1_000_000 / 10_000


def seeded(record: ModelRecord | None, spec: ModelSpec, digest: str | None) -> ModelRecord:
    """The record after the registry file's entry ``spec`` was read: a new model starts at
    version 1 (``stable``); an entry never seen before becomes a new version and ``stable``
    moves to it (editing the file is a deploy); an entry seen before changes nothing, so a
    node with an older file never undoes a promote."""
    h = spec_hash(spec)
    if record is None:
        return ModelRecord(
            name=spec.name,
            versions={1: ModelVersion(number=1, spec=spec, digest=digest, note="registry file")},
            aliases={STABLE: 1},
            seeds=[h],
        )
    if h in record.seeds:
        return record
    number = record.latest + 1
    new = ModelVersion(number=number, spec=spec, digest=digest, note="registry file")
    moved = promoted(
        record.model_copy(update={"versions": {**record.versions, number: new}}), number
    )
    return moved.model_copy(update={"seeds": [*record.seeds, h]})


def added(record: ModelRecord, spec: ModelSpec, digest: str | None, note: str = "") -> ModelRecord:
    """The record with ``spec`` as its next version (no alias moves)."""
    if spec.name != record.name:
        raise ConfigError(f"a version of {record.name!r} cannot be named {spec.name!r}")
    number = record.latest + 1
    version = ModelVersion(number=number, spec=spec, digest=digest, note=note)
    return record.model_copy(update={"versions": {**record.versions, number: version}})


def promoted(record: ModelRecord, number: int, alias: str = STABLE) -> ModelRecord:
    """``alias`` points at version ``number``; where it pointed before joins its history."""
    if number not in record.versions:
        raise ConfigError(
            f"model {record.name!r} has no version {number} (versions: {sorted(record.versions)})"
        )
    if not re.match(r"^[A-Za-z][A-Za-z0-9_-]{0,39}$", alias):
        raise ConfigError(f"alias {alias!r}: letters, digits, _ and -, starting with a letter")
    before = record.aliases.get(alias)
    if before == number:
        return record
    history = dict(record.history)
    if before is not None:
        history[alias] = [*history.get(alias, []), before][-50:]
    return record.model_copy(
        update={"aliases": {**record.aliases, alias: number}, "history": history}
    )


def rolled_back(record: ModelRecord, alias: str = STABLE) -> ModelRecord:
    """``alias`` points at the version it pointed at before its last move."""
    past = record.history.get(alias) or []
    if not past:
        raise ConfigError(f"model {record.name!r}: alias {alias!r} has nothing to roll back to")
    history = {**record.history, alias: past[:-1]}
    return record.model_copy(
        update={"aliases": {**record.aliases, alias: past[-1]}, "history": history}
    )


def resolve(record: ModelRecord, at: str | None, job_id: str) -> int | None:
    """The version a job runs on: the one it names, else the split's for its share of jobs,
    else ``stable``; None when the alias or version does not exist."""
    if at is not None:
        found = record.version(at)
        return None if found is None else found.number
    if record.split is not None and bucket(job_id) < record.split.percent:
        return record.split.version
    return record.aliases.get(STABLE)


def shadow_of(record: ModelRecord, at: str | None, job_id: str) -> int | None:
    """The shadow version a job also runs on, or None (jobs naming a version never do)."""
    sh = record.shadow
    if sh is None or (at is not None and at.isdigit()):
        return None
    return sh.version if bucket(job_id, "shadow:") < sh.sample * 100 else None
