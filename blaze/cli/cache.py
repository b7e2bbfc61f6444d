"""``blaze cache``: the result cache: its counters and size, clearing it, warming it."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from blaze.cli.render import ExitCode, cli_settings, megabytes, out, say, wait_with_bar
from pipelines.errors import BlazeError, ConfigError
from pipelines.stores.cache_index import TIERS

group = typer.Typer(no_args_is_help=True, help="The result cache.")


@group.command("stats")
def cache_stats(
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object")] = False,
) -> None:
    """Hits per tier, misses, entries and bytes (Redis and S3)."""
    from pipelines.stores import connect

    settings = cli_settings()
    store = connect.result_store(settings)
    cache = connect.result_cache(settings, store)
    try:
        counts = cache.index.counts()
        entries, redis_bytes = cache.index.usage()
        objects = store.scan(f"{settings.namespace}/cache/")
    finally:
        store.close()
        cache.index.close()
    hits = {t: counts.get(f"{t}_hits", 0) for t in TIERS}
    looked = sum(hits.values()) + counts.get("misses", 0)
    doc: dict[str, Any] = {
        "enabled": settings.cache.enabled,
        "lookups": looked,
        "hits": hits,
        "misses": counts.get("misses", 0),
        "hit_ratio": {t: round(n / looked, 4) if looked else 0.0 for t, n in hits.items()},
        "coalesced": counts.get("coalesced", 0),
        "stale": counts.get("stale", 0),
        "stored": counts.get("stored", 0),
        "redis": {"entries": entries, "bytes": redis_bytes},
        "s3": {"objects": len(objects), "bytes": sum(o.size for o in objects)},
    }
    if as_json:
        sys.stdout.write(json.dumps(doc) + "\n")
        return
    out.print(f"lookups   {looked}   misses {doc['misses']}", highlight=False)
    for tier in TIERS:
        out.print(
            f"{tier:<9} hits {hits[tier]:<8} ratio {doc['hit_ratio'][tier]:.1%}", highlight=False
        )
    out.print(
        f"coalesced {doc['coalesced']} (twins answered when the running job ended)   "
        f"stale {doc['stale']} (cached objects gone: ran again)   stored {doc['stored']}",
        highlight=False,
    )
    out.print(
        f"redis     {entries} entries, {megabytes(redis_bytes)}\n"
        f"s3        {doc['s3']['objects']} objects, {megabytes(doc['s3']['bytes'])}",
        highlight=False,
    )


@group.command("clear")
def cache_clear(
    model: Annotated[str | None, typer.Option(help="only this model's entries")] = None,
) -> None:
    """Forget cached answers (of one model, or all): their jobs compute again."""
    from pipelines.stores import connect

    settings = cli_settings()
    store = connect.result_store(settings)
    cache = connect.result_cache(settings, store)
    try:
        keys = cache.index.delete(model)
        root = settings.cache_prefix(model) if model else f"{settings.namespace}/cache/"
        objects = store.list_keys(root)
        store.delete_many(objects)
    finally:
        store.close()
        cache.index.close()
    what = f"model {model}" if model else "every model"
    out.print(f"cleared {len(keys)} entries and {len(objects)} objects of {what}", highlight=False)


@group.command("warm")
def cache_warm(
    file: Annotated[Path, typer.Argument(help="JSONL: one job per line (or a plain prompt)")],
    model: Annotated[str | None, typer.Option(help="model of rows that name none")] = None,
    kind: Annotated[str, typer.Option(help="llm, diffusion or embed (rows may say)")] = "llm",
    timeout: Annotated[float, typer.Option(min=1, help="seconds to wait for the answers")] = 3600,
) -> None:
    """Compute a known set of jobs now, so that later runs of them are answered at once.

    Jobs whose answers are cached already are answered from the cache; the report says how
    many ran, how many were cached, and which rows cannot be cached (sampled without a seed)."""
    from blaze.sdk import Client
    from pipelines.cache_keys import uncacheable
    from pipelines.client import read_jobs_file
    from pipelines.jobs import JOB_MODELS, validate_job
    from pipelines.registry import load_registry

    if kind not in JOB_MODELS:
        raise ConfigError(f"--kind must be one of {sorted(JOB_MODELS)}, got {kind!r}")
    settings = cli_settings()
    registry = load_registry(settings)
    defaults = {"model": model} if model else {}
    jobs = []
    skipped = []
    for n, row in enumerate(read_jobs_file(str(file), defaults), 1):
        try:
            job = validate_job(row, str(row.pop("kind", kind)))
        except BlazeError as exc:
            raise ConfigError(f"{file}:{n}: {exc}") from None
        spec = registry.get(job.model)
        if spec is None:
            raise ConfigError(f"{file}:{n}: unknown model {job.model!r}")
        why = uncacheable(job, spec)
        if why is not None:
            skipped.append(f"{file}:{n}: {why}")
            continue
        jobs.append(job)
    if not jobs:
        raise ConfigError(f"{file}: no job in it can be cached ({'; '.join(skipped[:3])})")
    with Client(settings) as client:
        client.submit_many(jobs)
        final = wait_with_bar(client, [j.job_id for j in jobs], timeout)
        docs = {j.job_id: client.result(j.job_id) for j in jobs}
    failed = [j for j, st in final.items() if st.state.value != "succeeded"]
    cached = sum(1 for d in docs.values() if d is not None and d.cached)
    out.print(
        f"warmed {len(jobs)} jobs: {len(jobs) - cached - len(failed)} computed, "
        f"{cached} already cached, {len(failed)} failed",
        highlight=False,
    )
    for line in skipped:
        say(f"not cacheable: {line}")
    if failed:
        raise ExitCode(1, f"{len(failed)} jobs did not succeed, e.g. {failed[0]}")


def register(app: typer.Typer) -> None:
    app.add_typer(group, name="cache")
