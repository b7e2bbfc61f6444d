"""Model versions: aliases, rollback, splits by job id, shadows, seeding from the file."""

from __future__ import annotations

import pytest

from pipelines.errors import ConfigError
from pipelines.live_registry import LiveRegistry, VersionedRegistry
from pipelines.registry import ModelSpec
from pipelines.settings import BlazeSettings
from pipelines.stores.versions import MemoryVersionStore
from pipelines.versions import (
    Shadow,
    Split,
    added,
    parse_ref,
    promoted,
    resolve,
    rolled_back,
    seeded,
    shadow_of,
)

V1 = ModelSpec(name="m", engine="echo")
V2 = ModelSpec(name="m", engine="echo", max_batch_size=4)


def record() -> object:
    return added(seeded(None, V1, None), V2, None, "bigger batches")


def test_aliases_move_and_roll_back_in_order() -> None:
    rec = seeded(None, V1, None)
    assert rec.aliases == {"stable": 1} and rec.latest == 1
    rec = added(rec, V2, None)
    assert rec.aliases == {"stable": 1} and rec.latest == 2  # adding moves nothing
    rec = promoted(promoted(rec, 2), 2, "canary")
    assert rec.aliases == {"stable": 2, "canary": 2} and rec.history == {"stable": [1]}
    rec = rolled_back(rec)
    assert rec.aliases["stable"] == 1 and rec.history["stable"] == []
    with pytest.raises(ConfigError, match="nothing to roll back"):
        rolled_back(rec)
    with pytest.raises(ConfigError, match="no version 7"):
        promoted(rec, 7)


def test_a_job_names_the_model_an_alias_or_a_version() -> None:
    rec = promoted(added(seeded(None, V1, None), V2, None), 2, "canary")
    assert resolve(rec, None, "j") == 1
    assert resolve(rec, "canary", "j") == 2
    assert resolve(rec, "2", "j") == 2
    assert resolve(rec, "nope", "j") is None and resolve(rec, "9", "j") is None
    assert parse_ref("m@canary") == ("m", "canary") and parse_ref("m") == ("m", None)
    with pytest.raises(ConfigError):
        parse_ref("m@@x")


def test_a_split_sends_its_share_by_job_id_and_a_job_always_lands_alike() -> None:
    rec = added(seeded(None, V1, None), V2, None).model_copy(
        update={"split": Split(version=2, percent=30)}
    )
    ids = [f"job-{i}" for i in range(1000)]
    share = sum(resolve(rec, None, j) == 2 for j in ids) / len(ids)
    assert 0.25 <= share <= 0.35
    assert [resolve(rec, None, j) for j in ids] == [resolve(rec, None, j) for j in ids]
    assert all(resolve(rec, "stable", j) == 1 for j in ids)  # naming an alias: no split


def test_shadows_copy_a_sample_and_never_jobs_that_name_a_version() -> None:
    rec = added(seeded(None, V1, None), V2, None).model_copy(
        update={"shadow": Shadow(version=2, sample=0.5)}
    )
    picked = [j for j in (f"j{i}" for i in range(1000)) if shadow_of(rec, None, j) == 2]
    assert 400 <= len(picked) <= 600
    assert shadow_of(rec, "1", picked[0]) is None


def test_the_file_seeds_versions_and_an_entry_seen_before_changes_nothing() -> None:
    rec = seeded(None, V1, None)
    assert seeded(rec, V1, None) is rec
    rec2 = seeded(rec, V2, None)  # an edited file entry is a new version, and stable
    assert rec2.latest == 2 and rec2.aliases["stable"] == 2
    rolled = rolled_back(rec2)
    assert seeded(rolled, V2, None) == rolled  # an old file never undoes a rollback
    assert seeded(rolled, V1, None) == rolled


def test_the_registry_answers_refs_and_follows_the_store(tmp_path: object) -> None:
    settings = BlazeSettings(registry_file=f"{tmp_path}/models.yaml", models_dir=f"{tmp_path}/m")
    (settings.registry_file).write_text("models:\n  m:\n    engine: echo\n")
    store = MemoryVersionStore()
    now = [0.0]
    live = LiveRegistry(settings, store, refresh_s=1, clock=lambda: now[0])
    assert live.route("m", "j") is not None and live.route("m", "j").ref == "m@1"  # type: ignore[union-attr]
    store.change("m", lambda rec: promoted(added(rec, V2, None), 2))  # type: ignore[arg-type]
    assert live.get("m").max_batch_size is None  # type: ignore[union-attr]
    now[0] = 2.0
    assert live.get("m").max_batch_size == 4  # type: ignore[union-attr]
    assert live.get("m@1") is not None and live.get("m@3") is None
    assert live.route("other", "j") is None
    plain = VersionedRegistry({"x": V1.model_copy(update={"name": "x"})}, {})
    routed = plain.route("x", "j")
    assert routed is not None and routed.ref == "x" and routed.version is None
