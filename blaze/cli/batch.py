"""``blaze batch``: OpenAI Batch API compatible batches."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from blaze.cli.render import (
    ExitCode,
    cli_settings,
    err,
    key_values,
    out,
    progress_bar,
    say,
    when_day,
)
from pipelines.errors import ConfigError, JobTimeout

if TYPE_CHECKING:
    from pipelines.openai.service import BatchInfo

group = typer.Typer(no_args_is_help=True, help="OpenAI Batch API compatible batches.")


def _print_batch(info: BatchInfo, as_json: bool = False) -> None:
    if as_json:
        sys.stdout.write(info.model_dump_json(indent=1) + "\n")
        return
    c = info.request_counts
    out.print(
        f"{info.id}  {info.status}  total {c.total}  completed {c.completed}  failed {c.failed}",
        highlight=False,
    )
    counts = info.blaze.get("counts")
    if counts:
        out.print("  jobs: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    if info.output_file_id and info.final:
        out.print(f"  output: {info.output_file_id}\n  errors: {info.error_file_id}")
    for e in (info.errors or {}).get("data", [])[:10]:
        err.print(f"  line {e.get('line')}: {e.get('code')}: {e.get('message')}", highlight=False)


@group.command("submit")
def batch_submit(
    file: Annotated[Path, typer.Argument(help="OpenAI Batch input file (JSONL)")],
    completion_window: Annotated[str, typer.Option(help="e.g. 24h")] = "24h",
    model: Annotated[
        str | None, typer.Option(help="run every request on this Blaze model instead")
    ] = None,
    metadata: Annotated[
        list[str] | None, typer.Option("--metadata", help="key=value (repeatable)")
    ] = None,
) -> None:
    """Validate a batch file and publish its requests; prints the batch id.

    Invalid lines do not stop the batch: each becomes a line of errors.jsonl naming the problem.
    """
    from blaze.sdk import Client

    meta = key_values(metadata or [], "--metadata")
    with Client(cli_settings()) as client, progress_bar("publishing", 1, transient=True) as bar:
        task = bar.add_task("publishing", total=None)
        info = client.batches().submit(
            file,
            completion_window=completion_window,
            metadata=meta or None,
            model=model,
            progress=lambda d, t: bar.update(task, completed=d, total=t),
        )
    sys.stdout.write(info.id + "\n")
    invalid = info.blaze.get("invalid", 0)
    err.print(
        f"{info.status}: {info.blaze.get('jobs', 0)} requests published, {invalid} invalid",
        highlight=False,
    )
    if info.status == "failed":
        _print_batch(info)
        raise typer.Exit(1)


@group.command("status")
def batch_status(batch_id: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show a batch's status and request counts (ends it if every request has settled)."""
    from blaze.sdk import Client

    with Client(cli_settings()) as client:
        _print_batch(client.batches().refresh(batch_id), as_json)


@group.command("wait")
def batch_wait(
    batch_id: str,
    timeout: Annotated[float | None, typer.Option(help="give up after this many seconds")] = None,
) -> None:
    """Wait for a batch to end; exit 0 if completed, 1 if failed/expired/cancelled, 3 on timeout."""
    from blaze.sdk import Client

    with Client(cli_settings()) as client, progress_bar("requests done", 1) as bar:
        task = bar.add_task("wait", total=None)

        def show(info: BatchInfo) -> None:
            c = info.request_counts
            bar.update(task, completed=c.completed + c.failed, total=c.total)

        try:
            info = client.batches().wait(batch_id, timeout, progress=show)
        except JobTimeout as exc:
            raise ExitCode(3, str(exc)) from None
    _print_batch(info)
    if info.status != "completed":
        raise typer.Exit(1)


@group.command("download")
def batch_download(
    batch_id: str,
    output: Annotated[Path, typer.Option("-o", "--output", help="folder to write into")] = Path(
        "."
    ),
) -> None:
    """Fetch batch.json, output.jsonl and errors.jsonl of an ended batch."""
    from blaze.sdk import Client

    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {output} exists and is not a folder")
    with Client(cli_settings()) as client:
        for path in client.batches().download(batch_id, output):
            say(str(path))


@group.command("cancel")
def batch_cancel(batch_id: str) -> None:
    """Cancel a batch: requests not yet running never run; running ones finish."""
    from blaze.sdk import Client

    with Client(cli_settings()) as client:
        _print_batch(client.batches().cancel(batch_id))


@group.command("list")
def batch_list() -> None:
    """Every batch of this namespace, newest first."""
    from blaze.sdk import Client

    with Client(cli_settings()) as client:
        infos = client.batches().list_batches()
    table = Table("batch id", "status", "created", "total", "completed", "failed")
    for b in infos:
        c = b.request_counts
        table.add_row(
            b.id, b.status, when_day(b.created_at), str(c.total), str(c.completed), str(c.failed)
        )
    out.print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(group, name="batch")
