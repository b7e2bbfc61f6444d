"""``blaze status``, ``wait``, ``cancel`` and ``events``: following jobs after they were sent."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.table import Table

from blaze.cli.render import cli_settings, err, job_ids_of, out, wait_with_bar, when
from pipelines.errors import ConfigError


def status(
    job_ids: Annotated[list[str], typer.Argument(help="job ids, or - to read them from stdin")],
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Show the state of jobs, when each state was reached, attempts and failure reasons."""
    from blaze.sdk import Client

    ids = job_ids_of(job_ids)
    with Client(cli_settings()) as client:
        rows = client.status(ids)
    if as_json:
        doc = {
            j: None
            if s is None
            else {
                "state": s.state.value,
                "reason": s.reason,
                "attempts": s.attempts,
                "updated_at": s.updated_at,
                "times": s.times,
                "group": s.group or None,
                "version": s.version or None,
            }
            for j, s in rows.items()
        }
        sys.stdout.write(json.dumps(doc, indent=1) + "\n")
        return
    table = Table("job id", "state", "queued", "running", "ended", "attempts", "reason")
    for jid, st in rows.items():
        if st is None:
            table.add_row(jid, "unknown", "", "", "", "0", "no status (never submitted?)")
            continue
        ended = st.updated_at if st.state.terminal else None
        table.add_row(
            jid,
            st.state.value,
            when(st.times.get("queued")),
            when(st.times.get("running")),
            when(ended),
            str(st.attempts),
            st.reason,
        )
    out.print(table)


def wait(
    job_ids: Annotated[list[str], typer.Argument(help="job ids, or - to read them from stdin")],
    timeout: Annotated[float | None, typer.Option(help="give up after this many seconds")] = None,
) -> None:
    """Wait for jobs to finish; exit 0 if all succeeded, 1 if any did not, 3 on timeout."""
    from blaze.sdk import Client

    if timeout is not None and timeout <= 0:
        raise ConfigError(f"--timeout must be > 0, got {timeout}")
    ids = job_ids_of(job_ids)
    with Client(cli_settings()) as client:
        final = wait_with_bar(client, ids, timeout)
    bad = {j: s for j, s in final.items() if s.state.value != "succeeded"}
    for jid, st in bad.items():
        err.print(f"{jid}: {st.state.value}: {st.reason}", highlight=False)
    out.print(f"{len(final) - len(bad)} succeeded, {len(bad)} not", highlight=False)
    if bad:
        raise typer.Exit(1)


def cancel(
    job_ids: Annotated[list[str], typer.Argument(help="job ids, or - to read them from stdin")],
) -> None:
    """Cancel jobs that have not started: they never run. Running jobs finish.

    Exit 0 if every job is cancelled, 1 if some could not be (running, ended or unknown).
    """
    from blaze.sdk import Client

    ids = job_ids_of(job_ids)
    with Client(cli_settings()) as client:
        states = client.cancel(ids)
    missed = 0
    for jid, state in states.items():
        if state is not None and state.value == "cancelled":
            out.print(f"{jid}: cancelled", highlight=False)
            continue
        missed += 1
        why = "unknown job" if state is None else f"not cancelled: already {state.value}"
        if state is not None and state.value == "running":
            why = "not cancelled: running (it will finish)"
        err.print(f"{jid}: {why}", highlight=False)
    if missed:
        raise typer.Exit(1)


def events(
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="keep waiting for new ones")
    ] = False,
) -> None:
    """Print the status event topic (one JSON object per job state change)."""
    from pipelines.stores import connect

    source = connect.status_events(cli_settings())
    try:
        for ev in source.read(follow=follow):
            sys.stdout.write(json.dumps(ev.to_dict()) + "\n")
            sys.stdout.flush()
    finally:
        source.close()


def register(app: typer.Typer) -> None:
    for command in (status, wait, cancel, events):
        app.command()(command)
