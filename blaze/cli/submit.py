"""``blaze submit`` and ``blaze schema``: publishing jobs to Kafka."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from blaze.cli.render import cli_settings, out, progress_bar
from pipelines.errors import BlazeError, ConfigError

group = typer.Typer(no_args_is_help=True, help="Publish jobs to Kafka.")


@group.command("llm")
def submit_llm(
    model: Annotated[str, typer.Option(help="model name")],
    prompt: Annotated[str | None, typer.Option(help="one prompt")] = None,
    file: Annotated[
        Path | None, typer.Option("--file", help="JSONL: one job object or prompt string per line")
    ] = None,
    chat: Annotated[bool, typer.Option(help="send --prompt as a user chat message")] = False,
    system: Annotated[str | None, typer.Option(help="system message (implies --chat)")] = None,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    seed: int | None = None,
) -> None:
    """Publish LLM jobs; prints one job id per line."""
    defaults: dict[str, Any] = {
        "model": model,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
    }
    if seed is not None:
        defaults["seed"] = seed

    def shape(row: dict[str, Any]) -> dict[str, Any]:
        if (chat or system) and "prompt" in row and "messages" not in row:
            msgs = [{"role": "system", "content": system}] if system else []
            user_text = row.pop("prompt")
            row = {**row, "messages": [*msgs, {"role": "user", "content": user_text}]}
        return row

    _submit("llm", defaults, prompt, file, shape)


@group.command("diffusion")
def submit_diffusion(
    model: Annotated[str, typer.Option(help="model name")],
    prompt: Annotated[str | None, typer.Option(help="one prompt")] = None,
    file: Annotated[
        Path | None, typer.Option("--file", help="JSONL: one job object or prompt string per line")
    ] = None,
    negative_prompt: str | None = None,
    width: int = 512,
    height: int = 512,
    steps: Annotated[int, typer.Option("--steps", help="num_inference_steps")] = 30,
    guidance_scale: float = 7.5,
    num_images: int = 1,
    seed: int | None = None,
) -> None:
    """Publish text-to-image jobs; prints one job id per line."""
    defaults: dict[str, Any] = {
        "model": model,
        "width": width,
        "height": height,
        "num_inference_steps": steps,
        "guidance_scale": guidance_scale,
        "num_images": num_images,
    }
    if negative_prompt is not None:
        defaults["negative_prompt"] = negative_prompt
    if seed is not None:
        defaults["seed"] = seed
    _submit("diffusion", defaults, prompt, file, lambda row: row)


@group.command("embed")
def submit_embed(
    model: Annotated[str, typer.Option(help="model name")] = "all-minilm-l6-v2",
    text: Annotated[
        list[str] | None, typer.Option("--text", help="a text (repeatable): one job")
    ] = None,
    file: Annotated[
        Path | None, typer.Option("--file", help="JSONL: one job object or text per line")
    ] = None,
    raw: Annotated[bool, typer.Option("--raw", help="do not L2-normalise the vectors")] = False,
) -> None:
    """Publish embedding jobs; prints one job id per line."""
    defaults: dict[str, Any] = {"model": model, "normalize": not raw}

    def shape(row: dict[str, Any]) -> dict[str, Any]:
        if "prompt" in row and "texts" not in row:  # a plain string line is one text
            row = {**row, "texts": [row.pop("prompt")]}
        return row

    if (text is None) == (file is None):
        raise ConfigError("give --text (repeatable) or --file, not both")
    rows = [{"texts": text}] if text is not None else None
    _submit("embed", defaults, None, file, shape, rows=rows)


def _submit(
    kind: str,
    defaults: dict[str, Any],
    prompt: str | None,
    file: Path | None,
    shape: Callable[[dict[str, Any]], dict[str, Any]],
    rows: list[dict[str, Any]] | None = None,
) -> None:
    from blaze.sdk import Client
    from pipelines.client import read_jobs_file
    from pipelines.jobs import validate_job

    if rows is None:
        if (prompt is None) == (file is None):
            raise ConfigError("give exactly one of --prompt or --file")
        rows = [{"prompt": prompt}] if prompt is not None else read_jobs_file(str(file), {})
    jobs = []
    for n, row in enumerate(rows, 1):
        try:
            jobs.append(validate_job({**defaults, **shape(row)}, kind))
        except BlazeError as exc:
            where = f"{file}:{n}: " if file else ""
            raise ConfigError(f"{where}{exc}") from None
    with Client(cli_settings()) as client:
        if len(jobs) > 1:
            with progress_bar("submitting", len(jobs), transient=True) as bar:
                task = bar.add_task("submitting", total=len(jobs))
                handles = client.submit_many(
                    jobs, progress=lambda d, t: bar.update(task, completed=d)
                )
        else:
            handles = client.submit_many(jobs)
    for h in handles:
        out.print(h.job_id, highlight=False)


def schema(
    kind: Annotated[str | None, typer.Option(help="llm or diffusion (default: all)")] = None,
) -> None:
    """Print the JSON Schema of every job kind (for producers in other languages)."""
    from pipelines.jobs import JOB_MODELS

    if kind is not None and kind not in JOB_MODELS:
        raise ConfigError(f"--kind must be one of {sorted(JOB_MODELS)}, got {kind!r}")
    kinds = [kind] if kind else list(JOB_MODELS)
    settings = cli_settings()
    doc = {
        k: {
            "topic": settings.jobs_topic(k),
            "key": "job_id (UTF-8)",
            "schema": JOB_MODELS[k].model_json_schema(),
        }
        for k in kinds
    }
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")


def register(app: typer.Typer) -> None:
    app.add_typer(group, name="submit")
    app.command()(schema)
