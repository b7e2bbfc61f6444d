"""The real demo model answers a simple factual question (slow: converts the model once)."""

from pathlib import Path

import pytest

from engines.llm import TransformersLLM
from engines.sources import install_demo_model
from pipelines.jobs import ChatMessage, LLMJob
from pipelines.registry import DEMO_MODEL
from pipelines.settings import BlazeSettings

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[3]


def test_smollm2_knows_the_capital_of_france() -> None:
    # the converted folder is cached in the project's models folder, like `blaze demo` does
    folder = install_demo_model(BlazeSettings(models_dir=ROOT / ".blaze" / "models"))
    engine = TransformersLLM(DEMO_MODEL, folder, dtype="bfloat16")
    engine.load("cpu")
    question = LLMJob(
        model=DEMO_MODEL,
        messages=[ChatMessage(role="user", content="What is the capital of France?")],
        max_new_tokens=24,
    )
    other = LLMJob(model=DEMO_MODEL, prompt="The opposite of hot is", max_new_tokens=4)
    answer, _ = engine.run([question, other])
    assert answer.error is None and "Paris" in (answer.text or "")
    assert engine.describe()["weights"] and answer.finish_reason in ("stop", "length")
