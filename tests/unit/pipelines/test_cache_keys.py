"""Cache keys change with everything that changes an answer, and with nothing else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipelines.cache_keys import (
    NO_WEIGHTS,
    cache_key,
    engine_version,
    forget_digests,
    uncacheable,
    weights_digest,
)
from pipelines.jobs import ChatMessage, DiffusionJob, EmbedJob, LLMJob
from pipelines.registry import ModelSpec
from pipelines.settings import BlazeSettings

SPEC = ModelSpec(name="m")
DIGEST = "sha256:" + "1" * 64
BASE: dict[str, Any] = {"model": "m", "prompt": "hi", "max_new_tokens": 8}


def key(job: Any, spec: ModelSpec = SPEC, digest: str = DIGEST, engine: str = "e/1") -> str | None:
    return cache_key(job, spec, digest, engine)


def test_who_asked_and_when_do_not_change_the_key() -> None:
    a = LLMJob(job_id="a", **BASE)
    b = LLMJob(job_id="b", priority=9, tags={"batch_id": "x"}, **BASE)
    assert key(a) == key(b) is not None


@pytest.mark.parametrize(
    "change",
    [
        {"prompt": "hi!"},
        {"max_new_tokens": 9},
        {"stop": ["."]},
        {"temperature": 0.5, "seed": 1},
        {"prompt": None, "messages": [ChatMessage(role="user", content="hi")]},
    ],
)
def test_every_input_and_parameter_changes_the_key(change: dict[str, Any]) -> None:
    assert key(LLMJob(**{**BASE, **change})) != key(LLMJob(**BASE))


def test_sampled_jobs_key_on_seed_and_top_p_greedy_ones_do_not() -> None:
    sampled = {**BASE, "temperature": 0.7, "seed": 3}
    assert key(LLMJob(**sampled)) != key(LLMJob(**{**sampled, "seed": 4}))
    assert key(LLMJob(**sampled)) != key(LLMJob(**{**sampled, "top_p": 0.9}))
    assert key(LLMJob(**BASE, seed=1)) == key(LLMJob(**BASE, seed=2))
    assert key(LLMJob(**BASE, top_p=0.5)) == key(LLMJob(**BASE))


@pytest.mark.parametrize(
    "option",
    [
        {"dtype": "float32"},
        {"quantize": "int8"},
        {"generation": "continuous"},
        {"batch_invariant": True},
    ],
)
def test_engine_options_that_change_outputs_change_the_key(option: dict[str, Any]) -> None:
    other = ModelSpec(name="m", **option)
    assert key(LLMJob(**BASE), other) != key(LLMJob(**BASE))


def test_weights_and_engine_version_change_the_key() -> None:
    job = LLMJob(**BASE)
    assert key(job, digest="sha256:" + "2" * 64) != key(job)
    assert key(job, engine="e/2") != key(job)


def test_only_deterministic_jobs_have_a_key() -> None:
    assert uncacheable(LLMJob(**BASE, temperature=0.5), SPEC) == "a sampled job without a seed"
    assert key(LLMJob(**BASE, temperature=0.5)) is None
    assert key(LLMJob(**BASE, cache=False)) is None
    assert key(LLMJob(**BASE), ModelSpec(name="m", cache=False)) is None
    sd = ModelSpec(name="sd", kind="diffusion")
    assert key(DiffusionJob(model="sd", prompt="a cat"), sd) is None
    seeded = key(DiffusionJob(model="sd", prompt="a cat", seed=1), sd)
    assert seeded is not None
    assert key(DiffusionJob(model="sd", prompt="a cat", seed=1, width=64), sd) != seeded
    emb = ModelSpec(name="e", kind="embed")
    assert key(EmbedJob(model="e", texts=["a"]), emb) != key(EmbedJob(model="e", texts=["b"]), emb)


def test_engine_version_names_the_packages_that_compute() -> None:
    assert "transformers==" in engine_version(SPEC) and "torch==" in engine_version(SPEC)
    assert engine_version(ModelSpec(name="x", engine="echo")).startswith("echo/")


def test_weights_digest_reads_the_files_once_and_follows_changes(tmp_path: Path) -> None:
    forget_digests()
    settings = BlazeSettings(models_dir=tmp_path / "models")
    folder = settings.models_dir / "m"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights-1")
    first = weights_digest(settings, SPEC)
    assert first is not None and first.startswith("sha256:")
    assert (settings.models_dir / ".digests.json").exists()  # remembered by path, size, time
    forget_digests()
    assert weights_digest(settings, SPEC) == first
    (folder / "model.safetensors").write_bytes(b"weights-2")
    forget_digests()
    assert weights_digest(settings, SPEC) != first
    forget_digests()
    assert weights_digest(settings, ModelSpec(name="absent")) is None
    assert weights_digest(settings, ModelSpec(name="x", engine="echo")) == NO_WEIGHTS
    assert weights_digest(settings, ModelSpec(name="absent", digest=DIGEST)) == DIGEST
    forget_digests()
