"""The real demo model on the default path (slow: converts the model once)."""

from pathlib import Path

import pytest

from blaze.cli.demo import DEMO_QUESTIONS
from engines.llm import TransformersLLM
from engines.sources import install_demo_model
from pipelines.jobs import ChatMessage, LLMJob
from pipelines.registry import DEMO_MODEL
from pipelines.settings import BlazeSettings

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[3]


def test_the_default_path_answers_the_demo_as_well_as_each_job_alone() -> None:
    # the converted folder is cached in the project's models folder, like `blaze demo` does
    folder = install_demo_model(BlazeSettings(models_dir=ROOT / ".blaze" / "models"))
    default = TransformersLLM(DEMO_MODEL, folder)  # dtype auto, as the registry's default
    default.load("cpu")
    reference = TransformersLLM(DEMO_MODEL, folder, dtype="float32")
    reference.load("cpu")
    jobs = [
        LLMJob(model=DEMO_MODEL, messages=[ChatMessage(role="user", content=q)], max_new_tokens=16)
        for q in DEMO_QUESTIONS * 2
    ]
    batch = default.run(jobs)  # the demo's questions in one batch, as `blaze demo` sends them
    assert all(o.error is None for o in batch)
    france = [o.text or "" for o, q in zip(batch, DEMO_QUESTIONS * 2, strict=True) if "France" in q]
    assert len(france) == 2 and all("Paris" in t for t in france), france
    ref = [reference.run([j])[0].text for j in jobs]
    alone = ref if default.dtype == "float32" else [default.run([j])[0].text for j in jobs]
    same_batched = sum(o.text == r for o, r in zip(batch, ref, strict=True))
    same_alone = sum(a == r for a, r in zip(alone, ref, strict=True))
    # the quality floor: a batch answers no worse than each job sent alone in the same dtype
    assert same_batched >= same_alone, (default.dtype, same_batched, same_alone)
    assert default.describe()["weights"] and batch[0].finish_reason in ("stop", "length")
