"""``blaze workers`` and ``blaze health``: process state from heartbeats and probes."""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from blaze.cli.render import ExitCode, ago, cli_settings, megabytes, out, say

JsonFlag = typer.Option(False, "--json", help="one JSON document for scripts")


def workers(
    as_json: bool = JsonFlag,
    all_: bool = typer.Option(False, "--all", help="also list gone workers"),
) -> None:
    """Workers from their heartbeats: alive, stale (silent past the window) or gone, with the
    circuit breakers of the queues they serve."""
    from pipelines.fleet import Breakers
    from pipelines.observe.heartbeats import HeartbeatStore

    settings = cli_settings()
    store = HeartbeatStore(settings)
    try:
        seen = [s for s in store.seen("worker") if all_ or s.state != "gone"]
        queues = sorted({str(q) for s in seen for q in s.beat.info.get("queues") or []})
        breakers = Breakers(settings, store.client).states(queues)
    finally:
        store.close()
    if as_json:
        docs = [
            {
                "state": s.state,
                "age_s": round(s.age_s, 1),
                **asdict(s.beat),
                "breakers": {
                    q: asdict(breakers[q]) for q in s.beat.info.get("queues") or [] if q in breakers
                },
            }
            for s in seen
        ]
        out.print_json(json.dumps(docs))
        return
    now = time.time()
    table = Table(
        "worker", "state", "last beat", "device", "models", "batch", "last batch", "breaker"
    )
    for s in seen:
        info = s.beat.info
        models = ", ".join(f"{m} ({megabytes(b)})" for m, b in (info.get("models") or {}).items())
        batch = info.get("batch") or {}
        last = info.get("last_batch") or {}
        outcome = last.get("outcome") or {}
        table.add_row(
            s.beat.id,
            {"alive": "[green]alive[/]", "stale": "[red]stale[/]"}.get(s.state, "gone"),
            f"{s.age_s:.1f}s ago",
            str(info.get("device", "")),
            models,
            f"{batch.get('jobs')} jobs, {ago(batch.get('started_at'), now)}" if batch else "",
            (
                f"{ago(last.get('finished_at'), now)}: "
                + ", ".join(f"{k} {v}" for k, v in outcome.items())
            )
            if last
            else "",
            breaker_text(
                [breakers[q] for q in info.get("queues") or [] if q in breakers], settings, now
            ),
        )
    out.print(table if seen else "no workers have beaten in the last day")


def breaker_text(states: list[Any], settings: Any, now: float) -> str:
    """``closed``, or each queue whose breaker is not closed with why and since when."""
    bad = [b for b in states if b.state != "closed"]
    if not bad:
        return "closed"
    return "; ".join(
        f"[red]{b.queue.removeprefix(settings.namespace + '.')} {b.state}[/] "
        f"({b.failures} failures, {ago(b.opened_at, now)}: {b.reason[:80]})"
        for b in bad
    )


def probe(url: str, timeout_s: float = 3.0) -> tuple[bool, dict[str, Any]]:
    """GET ``url``/readyz: (ready, body); an unreachable process is not ready, named why."""
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=timeout_s) as resp:
            return True, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            return False, json.loads(exc.read())
        except ValueError:
            return False, {"failing": [f"HTTP {exc.code}"]}
    except (OSError, ValueError) as exc:
        return False, {"failing": [f"unreachable: {type(exc).__name__}"]}


def health(as_json: bool = JsonFlag) -> None:
    """Check Kafka, Redis, S3 and every running process; exit 1 naming whatever is down."""
    from pipelines.observe import local
    from pipelines.observe.checks import service_checks
    from pipelines.observe.heartbeats import HeartbeatStore

    settings = cli_settings()
    rows: list[dict[str, Any]] = []
    for name, check in service_checks(settings, "kafka", "redis", "s3").items():
        why = check()
        rows.append({"name": name, "what": "service", "ok": why is None, "detail": why or "ok"})
    procs: dict[str, dict[str, Any]] = {}
    if all(r["ok"] for r in rows if r["name"] == "redis"):
        store = HeartbeatStore(settings)
        try:
            for s in store.seen():
                if s.state == "gone":
                    continue
                procs[f"{s.beat.role}:{s.beat.id}"] = {
                    "role": s.beat.role,
                    "id": s.beat.id,
                    "url": s.beat.url,
                    "state": s.state,
                    "age_s": s.age_s,
                }
        finally:
            store.close()
    for doc in local.running(settings.observe.run_dir):
        procs.setdefault(f"{doc['role']}:{doc['id']}", {**doc, "state": "running"})
    for key, p in sorted(procs.items()):
        if p["state"] == "stale":
            detail = f"stale: last heartbeat {p['age_s']:.0f}s ago"
            rows.append({"name": key, "what": p["role"], "ok": False, "detail": detail})
            continue
        if not p.get("url"):
            rows.append({"name": key, "what": p["role"], "ok": True, "detail": "alive (no probes)"})
            continue
        ready, body = probe(p["url"])
        detail = "ready" if ready else "not ready: " + ", ".join(body.get("failing", []))
        if not ready and body.get("checks"):
            detail += (
                " (" + "; ".join(f"{k}: {v}" for k, v in body["checks"].items() if v != "ok") + ")"
            )
        rows.append(
            {"name": key, "what": p["role"], "ok": ready, "detail": detail, "url": p["url"]}
        )
    down = [r["name"] for r in rows if not r["ok"]]
    if as_json:
        out.print_json(json.dumps({"ok": not down, "down": down, "checks": rows}))
    else:
        table = Table("what", "name", "state", "detail")
        for r in rows:
            table.add_row(
                r["what"], r["name"], "[green]ok[/]" if r["ok"] else "[red]down[/]", r["detail"]
            )
        out.print(table)
    if down:
        raise ExitCode(1, "down: " + ", ".join(down))


def targets(
    out_file: Annotated[
        Path | None, typer.Option("--out", help="write here (atomically) instead of printing")
    ] = None,
) -> None:
    """Prometheus file_sd targets of every live process, from the heartbeats."""
    from pipelines.observe.heartbeats import HeartbeatStore

    settings = cli_settings()
    store = HeartbeatStore(settings)
    try:
        seen = [s for s in store.seen() if s.state != "gone" and s.beat.url]
    finally:
        store.close()
    groups = [
        {
            "targets": [s.beat.url.split("://", 1)[-1]],
            "labels": {
                "role": s.beat.role,
                "namespace": settings.namespace,
                "process": s.beat.id,
                **({"__scheme__": "https"} if s.beat.url.startswith("https") else {}),
            },
        }
        for s in seen
    ]
    text = json.dumps(groups, indent=1) + "\n"
    if out_file is None:
        sys.stdout.write(text)
        return
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_suffix(out_file.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(out_file)
    say(f"{len(groups)} targets written to {out_file}")


def register(app: typer.Typer) -> None:
    app.command()(workers)
    app.command()(health)
    app.command()(targets)
