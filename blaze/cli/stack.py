"""``blaze stack``: the embedded Kafka, S3 and Redis (and Airflow) on 127.0.0.1."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from blaze.cli.render import cli_settings, out, say
from infra.stack import Stack

group = typer.Typer(no_args_is_help=True, help="The embedded Kafka/S3/Redis stack.")


@group.command("up")
def stack_up(
    with_airflow: Annotated[
        bool,
        typer.Option(
            "--with-airflow", help="also start Airflow (standalone) running the template DAGs"
        ),
    ] = False,
    with_gateway: Annotated[
        bool,
        typer.Option("--with-gateway", help="also start the HTTP gateway (gateway.port)"),
    ] = False,
) -> None:
    """Start SeaweedFS, Tansu and Valkey (and Airflow, the gateway) on 127.0.0.1."""
    stack = Stack(cli_settings(), with_airflow=with_airflow, with_gateway=with_gateway)
    stack.up(progress=lambda msg: out.print(msg))
    _print_stack(stack)
    if with_airflow:
        af = stack.settings.airflow
        out.print(
            f"Airflow UI and API: {stack.settings.airflow_url} (user {af.username}, password "
            "from BLAZE_AIRFLOW__PASSWORD)",
            highlight=False,
        )
    if with_gateway:
        out.print(
            f"Gateway: http://127.0.0.1:{stack.settings.gateway.port}/v1 "
            "(create a key: blaze keys create --name NAME --scopes submit,read)",
            highlight=False,
        )


@group.command("status")
def stack_status() -> None:
    """Show each embedded service, its address and health (exit 1 if any is down)."""
    stack = Stack(cli_settings())
    if not _print_stack(stack):
        raise typer.Exit(1)


@group.command("down")
def stack_down() -> None:
    """Stop exactly the processes ``stack up`` started; data stays in the state folder."""
    stack = Stack(cli_settings())
    stopped = stack.down()
    out.print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


def _print_stack(stack: Stack) -> bool:
    table = Table("service", "address", "pid", "health")
    ok = True
    for s in stack.status():
        health = "healthy" if s.healthy else ("running, not answering" if s.running else "stopped")
        ok = ok and s.healthy
        table.add_row(s.name, s.address, str(s.pid or "-"), health)
    out.print(table)
    say(f"state: {stack.state_dir}")
    return ok


def register(app: typer.Typer) -> None:
    app.add_typer(group, name="stack")
