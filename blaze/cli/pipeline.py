"""``blaze pipeline``: pipeline templates, checked here and run by Airflow."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from blaze.cli.pipeline_io import describe_steps, input_params, upload_inputs
from blaze.cli.render import ExitCode, cli_settings, err, key_values, out
from pipelines.errors import ConfigError, ServiceUnavailable
from pipelines.templates.airflow_api import AirflowClient
from pipelines.templates.spec import TemplateError, load_template, resolve_params, template_files

if TYPE_CHECKING:
    from pipelines.settings import BlazeSettings
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
    input_file: Annotated[
        list[str] | None,
        typer.Option(
            "--input",
            help="upload this JSONL file and pass its bucket key as input_key "
            "(PARAM=FILE for another parameter; repeatable)",
        ),
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="wait for the run to end")] = False,
    timeout: Annotated[float, typer.Option(help="with --wait: give up after seconds")] = 3600,
    as_json: Annotated[bool, typer.Option("--json", help="with --wait: the run as JSON")] = False,
) -> None:
    """Trigger a template's DAG through Airflow's REST API; prints the run id."""
    settings = cli_settings()
    paths = {p.stem: p for p in template_files(settings.templates_dir)}
    if name not in paths:
        raise ConfigError(f"unknown template {name!r} (known: {', '.join(sorted(paths))})")
    given = key_values(param or [], "--param")
    try:
        template = load_template(paths[name])
        inputs = input_params(template, input_file or [])
        clash = sorted(set(inputs) & set(given))
        if clash:
            raise ConfigError(f"{clash[0]} given both by --param and --input")
        conf = resolve_params(template, {**given, **{k: "-" for k in inputs}})
    except TemplateError as exc:
        raise ConfigError(str(exc)) from None
    if inputs:
        conf.update(upload_inputs(settings, inputs))
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
        _show_run(settings, client, run, as_json)
        if run.state != "success":
            raise typer.Exit(1)


def _show_run(
    settings: BlazeSettings, client: AirflowClient, run: PipelineRun, as_json: bool
) -> None:
    steps = describe_steps(settings, run, client.outputs(run.dag_id, run.run_id, list(run.tasks)))
    if as_json:
        doc = {"pipeline": run.dag_id, "run_id": run.run_id, "state": run.state, "steps": steps}
        sys.stdout.write(json.dumps(doc, indent=1) + "\n")
        return
    out.print(f"{run.dag_id}  {run.run_id}  {run.state}", highlight=False)
    for step in steps:
        out.print(f"  {step['step']}: {step['state']}  {step['summary']}".rstrip(), highlight=False)
        if step.get("url"):
            out.print(f"      {step['url']}", highlight=False, soft_wrap=True)


@group.command("status")
def pipeline_status(
    run_id: Annotated[str, typer.Argument(help="run id printed by `pipeline run`")],
    name: Annotated[str | None, typer.Option("--pipeline", help="template name")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="the run as JSON")] = False,
) -> None:
    """Show a pipeline run's state, each step's state, and what each step wrote."""
    settings = cli_settings()
    names = [name] if name else [p.stem for p in template_files(settings.templates_dir)]
    client = AirflowClient(settings)
    _show_run(settings, client, client.find_run(run_id, names), as_json)


def register(app: typer.Typer) -> None:
    app.add_typer(group, name="pipeline")
