"""What every command shares: consoles, settings, progress bars, job id arguments, exit codes."""

from __future__ import annotations

import os
import sys
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pipelines.errors import ConfigError, JobTimeout
from pipelines.settings import BlazeSettings, load_settings

# Piped output is not wrapped at 80 columns; COLUMNS still sets the width when given.
out = Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160)
err = Console(stderr=True, soft_wrap=True)


def say(text: str) -> None:
    """One line as it is: never wrapped (a long path stays on one line for grep and scripts),
    no markup or highlighting (a ``[`` in a file name is printed, not parsed)."""
    out.print(text, soft_wrap=True, markup=False, highlight=False)


class ExitCode(Exception):
    """End the command with this exit code and one error line."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def cli_settings() -> BlazeSettings:
    return load_settings()


def setup_logging(level: str, fmt: str | None = None) -> None:
    """Logs of a long-running command: ``fmt`` text or json (default: BLAZE_OBSERVE__LOG_FORMAT)."""
    from pipelines.observe.logs import setup_logging as setup

    if fmt is not None and fmt not in ("text", "json"):
        raise ConfigError(f"--log-format must be text or json, got {fmt!r}")
    setup(level, fmt or load_settings().observe.log_format)


def job_ids_of(job_ids: list[str]) -> list[str]:
    """Job ids from arguments; ``-`` reads more from standard input (one per line)."""
    from pipelines.jobs import is_job_id  # pydantic's models: only for commands that need them

    ids: list[str] = []
    for arg in job_ids:
        if arg == "-":
            ids.extend(line.strip() for line in sys.stdin if line.strip())
        else:
            ids.append(arg)
    bad = [j for j in ids if not is_job_id(j)]
    if bad:
        raise ConfigError(f"not a job id: {bad[0]!r}")
    if not ids:
        raise ConfigError("no job ids given")
    return list(dict.fromkeys(ids))


def key_values(items: list[str], option: str) -> dict[str, str]:
    """``key=value`` arguments of a repeatable option; ``ConfigError`` names a malformed one."""
    out_: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{option} wants key=value, got {item!r}")
        out_[key] = value
    return out_


def when(ts: float | None) -> str:
    return "" if ts is None else datetime.fromtimestamp(ts).strftime("%H:%M:%S.%f")[:-3]


def ago(ts: float | None, now: float) -> str:
    """``12s ago`` (empty for no time)."""
    return "" if not ts else f"{max(0.0, now - ts):.0f}s ago"


def megabytes(n: float) -> str:
    mb = n / 2**20
    return f"{mb:.1f} MB" if mb < 10 else f"{mb:,.0f} MB"


def when_day(ts: float) -> str:
    return datetime.fromtimestamp(ts).isoformat(timespec="seconds")


def progress_bar(label: str, total: int, transient: bool = False) -> Progress:
    return Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=transient,
    )


def wait_with_bar(client: Any, job_ids: list[str], timeout: float | None) -> dict[str, Any]:
    """``client.wait`` with a progress bar; a timeout ends the command with exit code 3."""
    with progress_bar("jobs done", len(job_ids)) as bar:
        task = bar.add_task("wait", total=len(set(job_ids)))
        try:
            result: dict[str, Any] = client.wait(
                job_ids,
                timeout=timeout,
                progress=lambda d, t: bar.update(task, completed=d, total=t),
            )
        except JobTimeout as exc:
            raise ExitCode(
                3,
                f"{exc} (pending: {' '.join(exc.pending[:5])}{' ...' * (len(exc.pending) > 5)})",
            ) from None
    return result
