"""``blaze dlq``: the dead letters, listed and replayed after a fix."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.table import Table

from blaze.cli.render import cli_settings, err, out
from pipelines.errors import ConfigError, ServiceUnavailable

group = typer.Typer(no_args_is_help=True, help="The dead-letter topic.")


@group.command("list")
def dlq_list(
    limit: Annotated[int | None, typer.Option(min=1, help="show at most this many")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
) -> None:
    """Show dead letters: where each came from, its job id, why it was rejected, and the
    job's state now (a letter whose job succeeded since, after a replay, says so)."""
    from pipelines.stores import connect

    settings = cli_settings()
    store = connect.dead_letters(settings)
    try:
        letters = store.read(limit=limit)
    finally:
        store.close()
    ids = {str(x.body["job_id"]) for x in letters if x.body.get("job_id")}
    now: dict[str, str] = {}
    status = connect.status_store(settings)
    try:  # the letters come from Kafka: listed even while Redis cannot say the states
        now = {j: st.state.value for j, st in status.get(sorted(ids)).items() if st is not None}
    except ServiceUnavailable as exc:
        err.print(f"states not shown: {exc}", highlight=False)
    finally:
        status.close()
    if as_json:
        for letter in letters:
            state = now.get(str(letter.body.get("job_id")))
            sys.stdout.write(json.dumps({"ref": letter.ref, **letter.body, "now": state}) + "\n")
        return
    table = Table("ref", "at", "job id", "stage", "reason", "now")
    for letter in letters:
        b = letter.body
        table.add_row(
            letter.ref,
            str(b.get("at", ""))[:19],
            str(b.get("job_id") or "-"),
            str(b.get("stage", "")),
            str(b.get("reason", "")),
            now.get(str(b.get("job_id")), "-"),
        )
    out.print(table)
    out.print(f"{len(letters)} dead letters", highlight=False)


@group.command("replay")
def dlq_replay(
    ref: Annotated[
        list[str] | None, typer.Option("--ref", help="PARTITION:OFFSET (repeatable)")
    ] = None,
    job: Annotated[list[str] | None, typer.Option("--job", help="job id (repeatable)")] = None,
    all_: Annotated[bool, typer.Option("--all", help="every dead letter")] = False,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="key=value applied before resubmitting")
    ] = None,
) -> None:
    """Resubmit chosen dead letters (optionally fixed with --set); prints the job ids.

    A letter whose job succeeded since, or is on its way again (an earlier replay), is left
    alone: replaying it would delete its result or run it twice."""
    from blaze.sdk import Client
    from pipelines.replay import fixed_job, parse_assignments
    from pipelines.stores import connect

    if not (ref or job or all_):
        raise ConfigError("choose letters with --ref, --job or --all")
    changes = parse_assignments(set_ or [])
    settings = cli_settings()
    store = connect.dead_letters(settings)
    try:
        letters = store.read()
    finally:
        store.close()
    chosen = [
        x for x in letters if all_ or x.ref in (ref or []) or (x.body.get("job_id") in (job or []))
    ]
    missing = {*(ref or [])} - {x.ref for x in chosen}
    missing |= {*(job or [])} - {str(x.body.get("job_id")) for x in chosen}
    if missing:
        raise ConfigError(f"no dead letter matches {', '.join(sorted(missing))}")
    jobs, skipped = [], []
    for letter in chosen:
        try:
            jobs.append(fixed_job(letter, changes))
        except ConfigError as exc:
            skipped.append(str(exc))
    latest = {j.job_id: j for j in jobs}  # a job dead-lettered twice is replayed once
    with Client(settings) as client:
        done = client.resubmit(list(latest.values()))
    handles = done.new + done.restarted
    for h in handles:
        out.print(h.job_id, highlight=False)
    for job_id, state in done.kept.items():
        why = "its result stands" if state.value == "succeeded" else "already on its way"
        err.print(f"kept: {job_id} is {state.value} ({why}); not replayed", highlight=False)
    for why in skipped:
        err.print(f"skipped: {why}", highlight=False)
    err.print(
        f"replayed {len(handles)}, kept {len(done.kept)}, skipped {len(skipped)}",
        highlight=False,
    )
    if skipped:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(group, name="dlq")
