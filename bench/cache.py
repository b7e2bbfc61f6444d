"""The result cache: the same jobs with and without it, in one run, on a private stack.

1,000 LLM jobs (the demo model, greedy, ``--tokens`` new tokens) of which half repeat earlier
ones: each of 500 distinct prompts is asked twice, in a shuffled order where a prompt's first
ask always comes before its repeat. All are submitted at once to two workers and a consumer,
first with ``BLAZE_CACHE__ENABLED=false`` and then with the cache on (fresh processes and a
fresh namespace each), timed from the first submit to the last terminal state. Then, with the
cache on, ``--hits`` repeats are submitted one at a time and timed from submit to their
``succeeded`` state (the result document is written before it), polled every 2 ms.

Checked: every job succeeds in both runs; every answer from the cache is byte-identical in text
to the answer of the job that ran. Prints a table, then as the last line one JSON object with
``speedup`` (jobs/s with the cache over without), ``hit_p50_ms`` and ``hit_ratio`` (jobs
answered from the cache over all jobs of the cached run).

    .venv/bin/python bench/cache.py                 # 1,000 jobs, 16 tokens, 2 workers
    .venv/bin/python bench/cache.py --jobs 200 --tokens 8 --hits 20   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchkit import private_settings, stop, wait_for

from infra.stack import Stack
from pipelines.client import Client
from pipelines.jobs import LLMJob
from pipelines.registry import DEMO_MODEL, DEMO_SOURCE
from pipelines.results import LLMResult
from pipelines.settings import BlazeSettings
from pipelines.stores.status import JobState

PROMPTS_FILE = Path(__file__).resolve().parent / "prompts.jsonl"


def workload(n: int, seed: int = 7) -> list[tuple[str, bool]]:
    """``n`` (prompt, is_repeat) pairs: n/2 distinct prompts, each asked twice, shuffled."""
    base = [json.loads(x)["prompt"] for x in PROMPTS_FILE.read_text().splitlines() if x.strip()]
    distinct = [f"{base[i % len(base)]} (take {i // len(base) + 1})" for i in range(n // 2)]
    order = [i for i in range(n // 2) for _ in (0, 1)]
    random.Random(seed).shuffle(order)
    seen: set[int] = set()
    out = []
    for i in order:
        out.append((distinct[i], i in seen))
        seen.add(i)
    return out


def start(settings: BlazeSettings, logs: Path, args: argparse.Namespace, cache: bool) -> list[Any]:
    env = {
        **os.environ,
        **settings.to_env(),
        "BLAZE_CACHE__ENABLED": "true" if cache else "false",
    }
    cli = [sys.executable, "-m", "blaze"]
    procs = []
    for i in range(args.workers):
        log = logs / f"{settings.namespace}-worker{i}.log"
        with log.open("wb") as fh:
            procs.append(
                subprocess.Popen(
                    [*cli, "worker", "--device", "cpu", "--model", DEMO_MODEL],
                    env=env,
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                )
            )
        wait_for(log, " ready.", procs[-1], 300)
    log = logs / f"{settings.namespace}-consumer.log"
    with log.open("wb") as fh:
        procs.append(
            subprocess.Popen([*cli, "consume"], env=env, stdout=fh, stderr=subprocess.STDOUT)
        )
    wait_for(log, "intake joined group", procs[-1], 120)
    return procs


def jobs_of(work: list[tuple[str, bool]], tokens: int) -> list[LLMJob]:
    return [LLMJob(model=DEMO_MODEL, prompt=p, max_new_tokens=tokens) for p, _ in work]


def run(
    settings: BlazeSettings, logs: Path, args: argparse.Namespace, cache: bool
) -> dict[str, Any]:
    """One timed run of the whole workload (and, with the cache, the lone hits)."""
    settings = settings.model_copy(update={"namespace": f"cache-{'on' if cache else 'off'}"})
    procs = start(settings, logs, args, cache)
    try:
        with Client(settings) as client:
            warm = [
                LLMJob(model=DEMO_MODEL, prompt=f"warm up {i}", max_new_tokens=2) for i in range(4)
            ]
            client.submit_many(warm)
            client.wait([j.job_id for j in warm], timeout=600)
            work = workload(args.jobs)
            jobs = jobs_of(work, args.tokens)
            ids = [j.job_id for j in jobs]
            t0 = time.perf_counter()
            client.submit_many(jobs)
            final = client.wait(ids, timeout=3600, poll_s=0.05)
            seconds = time.perf_counter() - t0
            docs = {j: client.result(j) for j in ids}
            hit_ms = lone_hits(client, work, args) if cache else []
    finally:
        stop(procs)
    texts = {j: d.text for j, d in docs.items() if isinstance(d, LLMResult)}
    cached = [d for d in docs.values() if d is not None and d.cached]
    same = sum(texts.get(d.job_id) == texts.get(str(d.provenance["cached_from"])) for d in cached)
    return {
        "jobs": len(ids),
        "succeeded": sum(s.state is JobState.SUCCEEDED for s in final.values()),
        "results_read": len(texts),
        "seconds": round(seconds, 2),
        "jobs_per_s": round(len(ids) / seconds, 2),
        "cached": len(cached),
        "cached_same_text": same,
        "hit_ms": hit_ms,
    }


def lone_hits(
    client: Client, work: list[tuple[str, bool]], args: argparse.Namespace
) -> list[float]:
    """Repeats of answered prompts, one at a time: submit to ``succeeded``, in milliseconds."""
    out = []
    prompts = [p for p, repeat in work if not repeat][: args.hits]
    for job in jobs_of([(p, True) for p in prompts], args.tokens):
        t0 = time.perf_counter()
        client.submit_many([job])
        while client.status_store.states([job.job_id])[job.job_id] is not JobState.SUCCEEDED:
            time.sleep(0.002)
        out.append((time.perf_counter() - t0) * 1000)
        doc = client.result(job.job_id)
        if doc is None or not doc.cached:
            sys.exit(f"bench: lone repeat {job.job_id} was not answered from the cache")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--jobs", type=int, default=1000, help="jobs per run (half are repeats)")
    ap.add_argument("--tokens", type=int, default=16, help="new tokens per job (greedy)")
    ap.add_argument("--batch", type=int, default=16, help="max batch size")
    ap.add_argument("--workers", type=int, default=2, help="worker processes (one thread each)")
    ap.add_argument("--hits", type=int, default=50, help="lone repeats timed with the cache on")
    args = ap.parse_args()
    for name in ("jobs", "tokens", "batch", "workers", "hits"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be >= 1")
    if args.jobs < 2 or args.jobs % 2:
        ap.error("--jobs must be an even number >= 2")
    tmp = Path(tempfile.mkdtemp(prefix="blaze-bench-cache-"))
    settings = private_settings(
        "cache",
        tmp,
        batch={"max_size": args.batch, "max_wait_s": 0.5, "max_queued_batches": 2},
        worker={"torch_threads": max(1, 2 // args.workers)},
    )
    settings = settings.model_copy(update={"models_dir": BlazeSettings().models_dir.resolve()})
    settings.registry_file.write_text(
        f"models:\n  {DEMO_MODEL}:\n    source: {DEMO_SOURCE}\n    max_batch_size: {args.batch}\n"
        "    max_wait_s: 0.5\n"
    )
    stack = Stack(settings)
    try:
        stack.up()
        settings = stack.settings
        logs = tmp / "logs"
        logs.mkdir()
        off = run(settings, logs, args, cache=False)
        on = run(settings, logs, args, cache=True)
    finally:
        stack.down()
    hits = on.pop("hit_ms")
    off.pop("hit_ms")
    result = {
        "speedup": round(on["jobs_per_s"] / off["jobs_per_s"], 3),
        "hit_p50_ms": round(statistics.median(hits), 1),
        "hit_p95_ms": round(sorted(hits)[int(0.95 * (len(hits) - 1))], 1),
        "hit_ratio": round(on["cached"] / on["jobs"], 3),
        "jobs": args.jobs,
        "tokens": args.tokens,
        "off": off,
        "on": on,
        "all_succeeded": off["succeeded"] == off["jobs"] and on["succeeded"] == on["jobs"],
        "cached_answers_identical": on["cached_same_text"] == on["cached"],
    }
    print(f"{'':<22}{'no cache':>12}{'cache':>12}")
    for key in ("jobs", "succeeded", "seconds", "jobs_per_s", "cached", "cached_same_text"):
        print(f"{key:<22}{off[key]:>12}{on[key]:>12}")
    print(
        f"speedup {result['speedup']}x; lone hits p50 {result['hit_p50_ms']} ms, "
        f"p95 {result['hit_p95_ms']} ms over {len(hits)}",
        flush=True,
    )
    print(json.dumps(result))
    if not (result["all_succeeded"] and result["cached_answers_identical"]):
        sys.exit("bench: a job failed or a cached answer differs from its original")


if __name__ == "__main__":
    main()
