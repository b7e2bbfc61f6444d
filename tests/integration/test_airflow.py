"""Every shipped template run end to end with ``dag.test`` on the real services, tiny models."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipelines.settings import BlazeSettings
from pipelines.stores.results_s3 import S3ResultStore
from tests.conftest import DAGS
from tests.integration.conftest import running_intake, running_worker

pytestmark = pytest.mark.integration


@pytest.fixture
def blaze_env(settings: BlazeSettings, airflow_home: Path) -> Iterator[BlazeSettings]:
    """This test's settings as BLAZE_* variables, which the operators read, plus a registry
    with an echo model standing in for a screening LLM (it answers with the request)."""
    settings.registry_file.write_text("models:\n  screen-echo:\n    engine: echo\n")
    saved = dict(os.environ)
    os.environ.update(settings.to_env())
    os.environ["BLAZE_AIRFLOW__INLINE_WAIT_S"] = "0"  # every job step defers to the trigger
    try:
        yield settings
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run_template(name: str, conf: dict[str, Any]) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(str(DAGS))
    assert bag.import_errors == {}
    return bag.dags[name].test(run_conf=conf)


def states(run: Any) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def keys(store: S3ResultStore, settings: BlazeSettings, template: str) -> list[str]:
    return store.list_keys(f"{settings.namespace}/pipelines/{template}/")


def test_every_shipped_template_runs_end_to_end(blaze_env: BlazeSettings) -> None:
    settings = blaze_env
    store = S3ResultStore(settings)
    ns = settings.namespace
    rows = [
        {"custom_id": "q1", "question": "What is two plus two?"},
        {"question": "Name a colour."},
        "a plain line",
    ]
    store.put_many(
        [
            (
                f"{ns}/inputs/questions.jsonl",
                "".join(json.dumps(r) + "\n" for r in rows).encode(),
                "application/jsonl",
            )
        ]
    )
    with running_worker(settings), running_intake(settings):
        bulk = run_template(
            "bulk_llm",
            {
                "input_key": f"{ns}/inputs/questions.jsonl",
                "prompt_template": "Answer: {question}{text}",
                "model": "tiny",
                "max_tokens": 4,
            },
        )
        assert str(bulk.state) == "success", states(bulk)
        (output_key,) = keys(store, settings, "bulk_llm")
        lines = [json.loads(x) for x in (store.get(output_key) or b"").splitlines()]
        assert [x["custom_id"] for x in lines] == ["q1", "1", "2"]
        assert all(x["response"]["status_code"] == 200 for x in lines)

        images = run_template(
            "prompt_to_images",
            {
                "idea": "a lighthouse in a storm",
                "n": 3,
                "llm_model": "tiny",
                "image_model": "sd-tiny",
                "width": 64,
                "height": 64,
                "steps": 2,
            },
        )
        assert str(images.state) == "success", states(images)
        (sheet_key,) = keys(store, settings, "prompt_to_images")
        from PIL import Image

        with Image.open(io.BytesIO(store.get(sheet_key) or b"")) as sheet:
            assert sheet.size == (3 * 128, 128)

        common = {
            "screen_model": "screen-echo",
            "image_model": "sd-tiny",
            "width": 64,
            "height": 64,
            "steps": 2,
        }
        mixed = run_template(
            "screened_generation",
            {**common, "requests": ["ALLOW a red fox", "DENY: weapons are not allowed"]},
        )
        assert str(mixed.state) == "success", states(mixed)
        assert states(mixed)["generate"] == "success" and states(mixed)["rejections"] == "success"
        docs = {
            k.rsplit("/", 1)[1]: json.loads(store.get(k) or b"{}")
            for k in keys(store, settings, "screened_generation")
        }
        assert docs["rejections.json"]["rejected"] == ["DENY: weapons are not allowed"]
        assert docs["rejections.json"]["reasons"] == ["DENY: weapons are not allowed"]
        assert docs["summary.json"]["passed"] == ["ALLOW a red fox"]
        assert len(docs["summary.json"]["images"]) == 1

        allowed = run_template("screened_generation", {**common, "requests": ["ALLOW a cat"]})
        ran = states(allowed)
        assert str(allowed.state) == "success", ran
        assert ran["rejections"] == "skipped" and ran["summary"] == "success"


def test_a_failing_step_fails_its_task_with_the_job_ids(blaze_env: BlazeSettings) -> None:
    settings = blaze_env
    with running_intake(settings):
        run = run_template(
            "screened_generation",
            {"requests": ["ALLOW x"], "screen_model": "no-such-model", "image_model": "sd-tiny"},
        )
    ran = states(run)
    assert str(run.state) == "failed" and ran["screen"] == "failed", ran
    assert ran["summary"] in ("upstream_failed", "skipped")
