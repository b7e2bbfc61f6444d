"""Every DAG file imports cleanly, one DAG per shipped template, with no network at parse."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DAGS


def test_dag_files_import_without_errors_or_network(
    airflow_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk import BaseHook

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a network call or connection lookup while parsing DAGs")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(BaseHook, "get_connection", refuse)
    monkeypatch.setenv("BLAZE_TEMPLATES_DIR", str(tmp_path))  # no user templates
    bag = DagBag(str(DAGS))
    assert bag.import_errors == {}
    assert set(bag.dags) == {"bulk_llm", "prompt_to_images", "screened_generation"}
    screened = bag.dags["screened_generation"]
    assert screened.get_task("summary").trigger_rule == "none_failed_min_one_success"
    assert screened.get_task("route").downstream_task_ids == {"generate", "rejections"}
    assert "requests" in screened.params and "blaze_namespace" in screened.params


def test_a_bad_template_is_an_import_error_naming_it_and_the_rest_still_load(
    airflow_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from airflow.dag_processing.dagbag import DagBag

    (tmp_path / "mine.yaml").write_text(
        "name: mine\nparams: {}\nsteps:\n  - id: a\n    kind: format\n"
        "    template: '{params.missing}'\n"
    )
    monkeypatch.setenv("BLAZE_TEMPLATES_DIR", str(tmp_path))
    bag = DagBag(str(DAGS))
    (error,) = bag.import_errors.values()
    assert "mine.yaml, step 'a', field 'template': unknown parameter 'missing'" in error
    assert set(bag.dags) == {"bulk_llm", "prompt_to_images", "screened_generation"}


def test_a_step_whose_jobs_failed_fails_naming_them(airflow_home: Path) -> None:
    from airflow.sdk.exceptions import AirflowException

    from pipelines.templates.operators import BlazeJobsOperator, BlazeJobsTrigger

    op = BlazeJobsOperator(
        task_id="screen", template_path=str(DAGS), step_id="screen"
    )  # execute_complete fails before it needs the template
    op._context = lambda context, settings: _Ctx()  # type: ignore[method-assign]
    event = {
        "status": "done",
        "total": 3,
        "failed_count": 2,
        "failed": [["j-1", "failed", "engine error: boom"], ["j-2", "dead", "unknown model"]],
    }
    with pytest.raises(AirflowException, match=r"2 of 3 jobs did not succeed: j-1 failed"):
        op.execute_complete({}, event)
    timeout = {
        "status": "timeout",
        "total": 3,
        "pending_count": 1,
        "pending": ["j-3"],
        "timeout_s": 5,
    }
    with pytest.raises(AirflowException, match="1 of 3 jobs not finished after 5 s: j-3"):
        op.execute_complete({}, timeout)
    trigger = BlazeJobsTrigger(["a", "b"], "ns", 60.0)
    path, kwargs = trigger.serialize()
    assert path == "pipelines.templates.operators.BlazeJobsTrigger" and kwargs["job_ids"] == [
        "a",
        "b",
    ]


class _Step:
    id = "screen"


class _Template:
    def step(self, step_id: str) -> _Step:
        return _Step()


class _Ctx:
    template = _Template()
