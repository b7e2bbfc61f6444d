"""The ``blaze`` command line: one module per command group, composed here.

Every failure ends in one line ``blaze: error: ...`` and a non-zero exit code: 2 for bad
arguments or settings, 3 for a wait that timed out, 1 for everything else. Commands import
the layers they drive (workers, the consumer, the stack) when they run, so every other
command starts without them.
"""

from __future__ import annotations

import sys

import typer
from typer.exceptions import TyperException

from blaze.cli import (
    batch,
    cache,
    demo,
    dlq,
    gateway,
    jobs,
    models,
    observe,
    pipeline,
    processes,
    results,
    stack,
    submit,
    top,
)
from blaze.cli.render import ExitCode, err
from pipelines.errors import BlazeError, ConfigError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Blaze: batch inference from Kafka to S3.",
)
for group in (
    stack,
    processes,
    observe,
    top,
    gateway,
    submit,
    jobs,
    results,
    cache,
    dlq,
    batch,
    pipeline,
    models,
    demo,
):
    group.register(app)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (errors are one line on stderr)."""
    command = typer.main.get_command(app)
    try:
        rc = command.main(args=argv, prog_name="blaze", standalone_mode=False)
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.Abort:
        err.print("blaze: aborted")
        return 130
    except TyperException as exc:  # click's usage errors, as vendored by typer
        ctx = getattr(exc, "ctx", None)
        where = f" ({ctx.command_path})" if ctx is not None else ""
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        err.print(f"blaze: error{where}: {message}", highlight=False, markup=False)
        return int(getattr(exc, "exit_code", 2))
    except ConfigError as exc:
        err.print(f"blaze: error: {exc}", highlight=False, markup=False)
        return 2
    except ExitCode as exc:
        err.print(f"blaze: error: {exc}", highlight=False, markup=False)
        return exc.code
    except BlazeError as exc:
        err.print(f"blaze: error: {exc}", highlight=False, markup=False)
        return 1
    except KeyboardInterrupt:
        return 130
    return rc if isinstance(rc, int) else 0


def entry() -> None:
    sys.exit(main())
