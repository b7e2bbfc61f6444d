"""``blaze pipeline``: pipeline templates, checked here and run by Airflow."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from blaze.cli.render import ExitCode, cli_settings, err, key_values, out
from pipelines.errors import ConfigError, ServiceUnavailable
from pipelines.templates.airflow_api import AirflowClient
from pipelines.templates.spec import TemplateError, load_template, resolve_params, template_files

if TYPE_CHECKING:
    from pipelines.templates.airflow_api import PipelineRun

group = typer.Typer(no_args_is_help=True, help="Pipeline templates run by Airflow.")


@group.command("validate")
def pipeline_validate(
    files: Annotated[list[Path], typer.Argument(help="template files (YAML)")],
) -> None:
    """Check template files; each problem names the file, the step and the field."""
    bad = 0
    for path in files:
        try:
            t = load_template(path)
        except TemplateError as exc:
            err.print(f"{exc}", highlight=False, markup=False)
            bad += 1
            continue
        out.print(f"{path}: ok ({t.name}: {len(t.steps)} steps)", highlight=False)
    if bad:
        raise ExitCode(2, f"{bad} of {len(files)} templates are invalid")


@group.command("list")
def pipeline_list() -> None:
    """Templates on this machine, and the DAGs Airflow has for them (if it is reachable)."""
    settings = cli_settings()
    table = Table("template", "parameters", "steps", "file", "in Airflow")
    in_airflow: dict[str, str] = {}
    try:
        for d in AirflowClient(settings).pipelines():
            in_airflow[d["dag_id"]] = "paused" if d.get("is_paused") else "active"
    except ServiceUnavailable:
        in_airflow = {}
    for path in template_files(settings.templates_dir):
        try:
            t = load_template(path)
        except TemplateError as exc:
            table.add_row(path.stem, "", "", str(path), f"invalid: {exc}")
            continue
        params = ", ".join(
            f"{n}" if spec.required else f"{n}={spec.default}" for n, spec in t.params.items()
        )
        table.add_row(t.name, params, str(len(t.steps)), str(path), in_airflow.get(t.name, "-"))
    out.print(table)


@group.command("run")
def pipeline_run(
    name: Annotated[str, typer.Argument(help="template name")],
    param: Annotated[
        list[str] | None, typer.Option("--param", help="key=value (repeatable)")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="wait for the run to end")] = False,
    timeout: Annotated[float, typer.Option(help="with --wait: give up after seconds")] = 3600,
) -> None:
    """Trigger a template's DAG through Airflow's REST API; prints the run id."""
    settings = cli_settings()
    paths = {p.stem: p for p in template_files(settings.templates_dir)}
    if name not in paths:
        raise ConfigError(f"unknown template {name!r} (known: {', '.join(sorted(paths))})")
    try:
        template = load_template(paths[name])
        conf = resolve_params(template, key_values(param or [], "--param"))
    except TemplateError as exc:
        raise ConfigError(str(exc)) from None
    client = AirflowClient(settings)
    run_id = client.trigger(template.name, conf)
    sys.stdout.write(run_id + "\n")
    if wait:
        deadline = time.monotonic() + timeout
        while True:
            run = client.run(template.name, run_id)
            if run.state in ("success", "failed"):
                break
            if time.monotonic() > deadline:
                raise ExitCode(3, f"run {run_id} still {run.state} after {timeout}s")
            time.sleep(2)
        _print_run(run)
        if run.state != "success":
            raise typer.Exit(1)


def _print_run(run: PipelineRun) -> None:
    out.print(f"{run.dag_id}  {run.run_id}  {run.state}", highlight=False)
    for task, state in run.tasks.items():
        out.print(f"  {task}: {state}", highlight=False)


@group.command("status")
def pipeline_status(
    run_id: Annotated[str, typer.Argument(help="run id printed by `pipeline run`")],
    name: Annotated[str | None, typer.Option("--pipeline", help="template name")] = None,
) -> None:
    """Show a pipeline run's state and each step's state."""
    settings = cli_settings()
    names = [name] if name else [p.stem for p in template_files(settings.templates_dir)]
    _print_run(AirflowClient(settings).find_run(run_id, names))


def register(app: typer.Typer) -> None:
    app.add_typer(group, name="pipeline")
