"""A template triggered through Airflow's REST API on a running Airflow, as a user does it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from pipelines.settings import BlazeSettings
from pipelines.templates.airflow_api import AirflowClient
from tests.e2e.conftest import User, stack_s3, wait_for_line

pytestmark = pytest.mark.e2e


def test_a_template_runs_through_the_rest_api_and_bad_templates_are_import_errors(
    user: User, tmp_path: Path
) -> None:
    ports = user.ports  # type: ignore[attr-defined]
    templates = tmp_path / ".blaze" / "templates"
    templates.mkdir(parents=True)
    (templates / "broken.yaml").write_text(
        "name: broken\nsteps:\n  - id: first\n    kind: teleport\n"
    )
    user.ok("stack", "up", "--with-airflow", timeout=400)
    status = user.ok("stack", "status")
    assert "airflow" in status and status.count("healthy") == 4
    user.ok("models", "make-tiny", str(tmp_path / "models" / "tiny"))
    user.start("worker", "--device", "cpu", "--dtype", "float32", log=tmp_path / "w.log")
    user.start("consume", log=tmp_path / "c.log")
    wait_for_line(tmp_path / "w.log", " ready.", 120)
    wait_for_line(tmp_path / "c.log", "intake joined group", 90)

    s3 = stack_s3(user)
    questions = tmp_path / "q.jsonl"
    questions.write_text(
        '{"text": "hello", "custom_id": "a"}\n{"text": "world", "custom_id": "b"}\n'
    )
    ran = user.ok(
        "pipeline",
        "run",
        "bulk_llm",
        "--input",
        str(questions),
        "--param",
        "model=tiny",
        "--param",
        "max_tokens=3",
        "--wait",
        "--timeout",
        "240",
        "--json",
        timeout=300,
    )
    run_id, _, doc = ran.partition("\n")
    run = json.loads(doc)
    assert run["state"] == "success" and run["run_id"] == run_id
    steps = {s["step"]: s for s in run["steps"]}
    # the input went up under the namespace; each step says what it read and wrote
    assert steps["read"]["rows"] == 2 and steps["read"]["key"].startswith("e2e/inputs/")
    assert steps["read"]["key"].endswith("/q.jsonl")
    assert steps["generate"]["jobs"] == {"succeeded": 2}
    key = steps["output"]["key"]
    assert key.startswith("e2e/pipelines/bulk_llm/") and key.endswith("/output.jsonl")
    lines = httpx.get(steps["output"]["url"], timeout=10).text.splitlines()
    assert [json.loads(x)["custom_id"] for x in lines] == ["a", "b"]
    status = user.ok("pipeline", "status", run_id)
    assert "success" in status and key in status and "2 jobs: 2 succeeded" in status
    top = user.ok("top", "--once", "--interval", "1")  # recent runs, from Airflow's API
    assert "pipeline runs" in top and "bulk_llm" in top and "3/3" in top
    keys = [
        o.object_name
        for o in s3.list_objects("blaze-results", prefix="e2e/pipelines/bulk_llm/", recursive=True)
    ]
    assert keys == [key]
    bad_input = tmp_path / "bad.jsonl"
    bad_input.write_text('{"text": "fine"}\nnot json\n')
    res = user.run("pipeline", "run", "bulk_llm", "--input", str(bad_input))
    assert res.returncode == 2 and "bad.jsonl:2: not valid JSON" in res.stderr
    res = user.run("pipeline", "run", "bulk_llm", "--input", "prompt=x.jsonl")
    assert res.returncode == 2 and "no string parameter 'prompt'" in res.stderr
    # the broken template is an import error that names it; the others still run
    api = AirflowClient(BlazeSettings(stack={"airflow_port": ports["airflow_port"]}))
    deadline = time.monotonic() + 90
    errors: list[str] = []
    while time.monotonic() < deadline and not errors:
        errors = [str(e.get("stack_trace")) for e in api.import_errors()]
        time.sleep(2)
    assert len(errors) == 1 and "broken.yaml, step 'first', field 'kind'" in errors[0]
    assert "Traceback" not in errors[0]
    assert {d["dag_id"] for d in api.pipelines()} >= {"bulk_llm", "screened_generation"}
    bad = user.run("pipeline", "run", "bulk_llm", "--param", "nope=1")
    assert bad.returncode == 2 and "unknown parameter 'nope'" in bad.stderr
