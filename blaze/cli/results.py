"""``blaze results``: results in the bucket: download, presigned links, retention."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from blaze.cli.render import cli_settings, err, job_ids_of, out, say, when_day
from pipelines.errors import ConfigError
from pipelines.settings import parse_duration

group = typer.Typer(no_args_is_help=True, help="Results in the bucket.")


@group.command("get")
def results_get(
    job_ids: Annotated[list[str], typer.Argument(help="job ids, or - to read them from stdin")],
    output: Annotated[Path, typer.Option("-o", "--output", help="folder to write into")] = Path(
        "."
    ),
) -> None:
    """Download each job's result.json and images into OUTPUT/JOB_ID/ (exit 1 if any lacks one)."""
    from blaze.sdk import Client

    ids = job_ids_of(job_ids)
    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {output} exists and is not a folder")
    missing = 0
    with Client(cli_settings()) as client:
        for jid in ids:
            files = client.result_files(jid)
            if not files:
                st = client.status([jid])[jid]
                state = st.state.value if st else "unknown"
                err.print(f"{jid}: no result yet (state: {state})", highlight=False)
                missing += 1
                continue
            folder = output / jid
            folder.mkdir(parents=True, exist_ok=True)
            for name, data in files.items():
                (folder / name).write_bytes(data)
            say(f"{jid}: {len(files)} files in {folder}")
    if missing:
        raise typer.Exit(1)


@group.command("url")
def results_url(
    job_ids: Annotated[list[str], typer.Argument(help="job ids")],
    expires: Annotated[str, typer.Option(help="how long the links work, e.g. 15m, 1h, 7d")] = "1h",
) -> None:
    """Print presigned URLs of each job's images (or its result.json), one per line."""
    from blaze.sdk import Client

    seconds = int(parse_duration(expires, "--expires"))
    if seconds > 7 * 86400:
        raise ConfigError(f"--expires can be at most 7d (S3's limit), got {expires!r}")
    ids = job_ids_of(job_ids)
    missing = 0
    with Client(cli_settings()) as client:
        for jid in ids:
            urls = client.urls(jid, seconds)
            if not urls:
                err.print(f"{jid}: no result yet", highlight=False)
                missing += 1
            for url in urls:
                sys.stdout.write(url + "\n")
    if missing:
        raise typer.Exit(1)


@group.command("sweep")
def results_sweep(
    older_than: Annotated[
        str | None,
        typer.Option(help="delete results older than this (default: BLAZE_S3__RETENTION_DAYS)"),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="only report")] = False,
) -> None:
    """Delete results, manifests and ended batches older than the retention age."""
    from pipelines.retention import sweep
    from pipelines.stores import connect

    settings = cli_settings()
    if older_than is not None:
        age = parse_duration(older_than, "--older-than")
    elif settings.s3.retention_days is not None:
        age = settings.s3.retention_days * 86400
    else:
        raise ConfigError("give --older-than (e.g. 30d) or set BLAZE_S3__RETENTION_DAYS")
    store = connect.result_store(settings)
    cache = connect.result_cache(settings, store)
    try:
        report = sweep(settings, store, age, dry_run=dry_run, index=cache.index)
    finally:
        store.close()
        cache.index.close()
    verb = "would delete" if dry_run else "deleted"
    parts = ", ".join(f"{n} {area}" for area, n in report.prefixes.items()) or "nothing"
    out.print(
        f"{verb} {parts} ({report.objects} objects, {report.bytes} bytes) "
        f"older than {when_day(report.cutoff)}",
        highlight=False,
    )
    if report.cache_entries:
        out.print(f"and {report.cache_entries} result-cache entries", highlight=False)
    if report.kept_open_batches:
        out.print(f"kept {report.kept_open_batches} batches that have not ended", highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(group, name="results")
