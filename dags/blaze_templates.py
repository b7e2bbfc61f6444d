"""One Airflow DAG per Blaze pipeline template (a DAG factory).

Templates come from ``pipelines/templates/shipped/`` (shipped) and ``BLAZE_TEMPLATES_DIR``
(default ``.blaze/templates``); a user's template with a shipped name replaces it. Each step
becomes one task: job steps defer while their Blaze jobs run, transforms run inline, a branch
step skips what it does not choose. Building the DAGs reads the YAML files only: no network
call, no connection lookup.

An invalid template gets no DAG here; ``blaze_template_check.py`` beside this file turns it
into an import error naming the file, the step and the field, so the valid templates keep
running meanwhile (``blaze pipeline validate FILE`` says the same before you deploy).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Param

from pipelines.settings import load_settings
from pipelines.templates.operators import NAMESPACE_KEY, operator_for
from pipelines.templates.spec import Template, TemplateError, load_template, template_files


def build_dag(path: Path) -> DAG:
    """The DAG of one template file; ``TemplateError`` if the template is invalid."""
    template = load_template(path)
    dag = DAG(
        dag_id=template.name,
        description=template.description.strip().splitlines()[0] if template.description else "",
        doc_md=template.description,
        schedule=None,
        catchup=False,
        params=_params(template),
        tags=["blaze", "template"],
        is_paused_upon_creation=False,
        max_active_runs=4,
    )
    with dag:
        tasks: dict[str, Any] = {}
        for step in template.steps:
            tasks[step.id] = operator_for(step.kind)(
                task_id=step.id,
                template_path=str(path.resolve()),
                step_id=step.id,
                trigger_rule=step.trigger_rule,
                doc_md=step.description or None,
            )
        for step in template.steps:
            for up in template.upstream(step):
                tasks[up] >> tasks[step.id]
    return dag


def _params(template: Template) -> dict[str, Param]:
    params = {
        name: Param(spec.default, type=spec.type, description=spec.description)
        if not spec.required
        else Param(type=spec.type, description=spec.description)
        for name, spec in template.params.items()
    }
    params[NAMESPACE_KEY] = Param(
        None, type=["null", "string"], description="run in this Blaze namespace (default: env)"
    )
    return params


def _build_all() -> dict[str, DAG]:
    dags: dict[str, DAG] = {}
    for path in template_files(load_settings().templates_dir):
        try:
            dag = build_dag(path)
        except TemplateError:
            continue  # reported by blaze_template_check.py as an import error
        dags[dag.dag_id] = dag
    return dags


globals().update(_build_all())
