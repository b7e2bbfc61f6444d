"""``blaze top``: a live terminal view of the pipeline, refreshed every second."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import typer
from rich.console import Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from blaze.cli.render import ago, cli_settings, megabytes, out


def _num(x: float | None, unit: str = "", digits: int = 1) -> str:
    if x is None:
        return "-"
    return f"{x:,.{digits}f}{unit}"


def _secs(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x * 1000:.0f} ms" if x < 1 else f"{x:.2f} s"


def render(snap: dict[str, Any]) -> RenderableType:
    """One frame of ``blaze top`` from a monitor snapshot."""
    now = snap["at"]
    r, t = snap["rates"], snap["totals"]
    head = Table.grid(padding=(0, 3))
    for _ in range(4):
        head.add_column()
    head.add_row(
        f"[bold]in[/] {_num(r['in_per_s'])} jobs/s",
        f"[bold]out[/] {_num(r['out_per_s'])} jobs/s",
        f"[bold]tokens[/] {_num(r['tokens_per_s'])}/s",
        f"[bold]lag[/] {_num(snap['lag'], digits=0)} msgs",
    )
    head.add_row(
        f"succeeded {t['succeeded']:,.0f}",
        f"[red]failed {t['failed']:,.0f}[/]" if t["failed"] else "failed 0",
        f"[yellow]dead-lettered {t['dead']:,.0f}[/]" if t["dead"] else "dead-lettered 0",
        f"batches {t['batches']:,.0f}",
    )
    fill = snap["batch_fill"]
    head.add_row(
        f"batch fill {_num(None if fill is None else fill * 100, '%', 0)}",
        f"mean batch {_num(snap['batch_size_mean'])}",
        f"open batches {snap['open_batches']:.0f}",
        f"paused partitions {snap['paused_partitions']:.0f}",
    )
    lat = Table("latency", "p50", "p90", "p99", box=None, header_style="bold")
    for key, label in (("e2e", "end to end"), ("queue_wait", "queue wait"), ("compute", "compute")):
        q = snap["latency"][key]
        lat.add_row(label, _secs(q["p50"]), _secs(q["p90"]), _secs(q["p99"]))
    queues = Table("queue", "waiting batches", box=None, header_style="bold")
    for name, depth in sorted(snap["queues"].items()):
        queues.add_row(name, f"{depth:.0f}")
    workers = Table(
        "worker", "state", "device", "models", "now", "last batch", box=None, header_style="bold"
    )
    shown = [w for w in snap["workers"] if w["state"] != "gone"]
    for w in shown:
        state = {"alive": "[green]alive[/]", "stale": "[red]stale[/]"}.get(w["state"], w["state"])
        models = ", ".join(f"{m} {megabytes(b)}" for m, b in w["models"].items())
        batch = w["batch"]
        doing = f"batch of {batch['jobs']} ({ago(batch['started_at'], now)})" if batch else "idle"
        last = w["last_batch"] or {}
        outcome = last.get("outcome") or {}
        last_s = (
            f"{ago(last.get('finished_at'), now)}: {outcome.get('succeeded', 0)} ok, "
            f"{outcome.get('failed', 0)} failed"
            if last and "error" not in outcome
            else (f"[red]{outcome.get('error')}[/]" if last else "")
        )
        workers.add_row(w["id"], state, str(w["device"] or ""), models, doing, last_s)
    problems = Table("when", "job", "what", "reason", box=None, header_style="bold")
    rows = [(f["at"], f["job_id"], f"failed ({f['model']})", f["reason"]) for f in snap["failures"]]
    rows += [
        (d["at"], d["job_id"] or "-", f"dead ({d['stage']})", d["reason"])
        for d in snap["dead_letters"]
    ]
    for at, job, what, reason in sorted(rows, key=lambda x: x[0] or 0, reverse=True)[:8]:
        problems.add_row(ago(at, now), job, what, reason[:100])
    parts: list[RenderableType] = [
        Panel(
            head,
            title=f"blaze top · {snap['namespace']} · {datetime.fromtimestamp(now):%H:%M:%S}",
            subtitle=f"rates over {snap['window_s']:.0f}s",
        ),
        Panel(Group(lat, "", queues), title="latency and queues"),
        Panel(workers if shown else "no workers", title="workers"),
    ]
    if snap["batches"]:
        batches = Table("batch", "status", "done", "failed", "total", box=None, header_style="bold")
        for b in snap["batches"][:5]:
            c = b["request_counts"]
            batches.add_row(
                b["id"], b["status"], str(c["completed"]), str(c["failed"]), str(c["total"])
            )
        parts.append(Panel(batches, title="OpenAI batches"))
    if snap.get("pipelines"):
        runs = Table("pipeline", "run", "state", "steps ended", box=None, header_style="bold")
        for r in snap["pipelines"][:5]:
            state = {"success": "[green]success[/]", "failed": "[red]failed[/]"}.get(
                r["state"], r["state"]
            )
            runs.add_row(r["pipeline"], r["run_id"], state, f"{r['steps_ended']}/{r['steps']}")
        parts.append(Panel(runs, title="pipeline runs"))
    parts.append(Panel(problems if rows else "none", title="recent failures and dead letters"))
    if snap["problem"]:
        parts.insert(0, f"[red]{snap['problem']}[/]")
    return Group(*parts)


def top(
    interval: float = typer.Option(1.0, min=0.2, max=60, help="seconds between refreshes"),
    once: bool = typer.Option(
        False, "--once", help="print one frame (rates over `interval`) and exit"
    ),
) -> None:
    """A live view: throughput, lag, queues, batch fill, latency, workers, failures."""
    from blaze.monitor import Monitor, openai_batches, pipeline_runs
    from blaze.sdk import Client
    from pipelines.openai.service import BatchService

    settings = cli_settings()
    batches = openai_batches(BatchService.of(Client(settings)))
    monitor = Monitor(settings, batches=batches, pipelines=pipeline_runs(settings))
    try:
        monitor.snapshot()
        if once:
            time.sleep(interval)
            out.print(render(monitor.snapshot()))
            return
        with Live(
            render(monitor.snapshot()), console=out, screen=False, auto_refresh=False
        ) as live:
            while True:
                time.sleep(interval)
                live.update(render(monitor.snapshot()), refresh=True)
    except KeyboardInterrupt:
        pass
    finally:
        monitor.close()


def register(app: typer.Typer) -> None:
    app.command()(top)
