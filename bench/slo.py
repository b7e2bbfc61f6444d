"""SLO-driven batching against the fixed window, at several arrival rates, in one run.

A private stack, one worker and one consumer; two models on the same engine with a known
cost (``blaze.dev.timed_engine``: a call of b jobs sleeps ``--fixed-s + --per-job-s * b``):

- ``fixed``: the default window (``--fixed-size`` jobs, ``--fixed-wait`` s);
- ``slo``: ``max_latency_s: --target`` with ``max_batch_size: --ceiling`` as its memory ceiling.

For each rate of ``--rates`` (jobs/s, Poisson arrivals for ``--seconds``), both models get the
same arrival times, one after the other (which goes first alternates). A job's latency is
submit to result written. Prints a table and, as the last line, one JSON object: per rate and
model ``p50_s``, ``p95_s``, ``jobs_per_s`` and ``mean_batch``.

    .venv/bin/python bench/slo.py                              # rates 5, 30, 60 jobs/s
    .venv/bin/python bench/slo.py --rates 5 --seconds 3        # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchkit import private_settings, stop, wait_for

from infra.stack import Stack
from pipelines.client import Client
from pipelines.jobs import LLMJob


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


def run_rate(client: Client, model: str, arrivals: list[float]) -> dict[str, float]:
    """Submit one job at each arrival time (seconds from now); wait; latency figures."""
    sent: dict[str, float] = {}
    t0 = time.time()
    for i, at in enumerate(arrivals):
        delay = t0 + at - time.time()
        if delay > 0:
            time.sleep(delay)
        job = LLMJob(model=model, prompt=f"job {i}", max_new_tokens=1)  # stamped now
        sent[job.job_id] = time.time()
        client.submit_many([job])
    client.wait(list(sent), timeout=600, poll_s=0.05)
    docs = [d for d in (client.result(j) for j in sent) if d is not None]
    lat = [d.created_at.timestamp() - sent[d.job_id] for d in docs]
    done = max(d.created_at.timestamp() for d in docs)
    sizes = [int(d.provenance.get("batch_size", 1)) for d in docs]
    return {
        "jobs": len(docs),
        "p50_s": round(pct(lat, 0.5), 3),
        "p95_s": round(pct(lat, 0.95), 3),
        "jobs_per_s": round(len(docs) / (done - t0), 1),
        "mean_batch": round(statistics.mean(sizes), 1),  # per job: the batch it rode in
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rates", default="5,30,60", help="arrival rates, jobs/s")
    ap.add_argument("--seconds", type=float, default=12.0, help="arrivals per rate, seconds")
    ap.add_argument("--target", type=float, default=1.0, help="the slo model's max_latency_s")
    ap.add_argument("--ceiling", type=int, default=64, help="the slo model's max_batch_size")
    ap.add_argument("--fixed-size", type=int, default=16)
    ap.add_argument("--fixed-wait", type=float, default=0.5)
    ap.add_argument("--fixed-s", type=float, default=0.1, help="engine: seconds per call")
    ap.add_argument("--per-job-s", type=float, default=0.01, help="engine: seconds per job")
    args = ap.parse_args()
    try:
        rates = [float(r) for r in args.rates.split(",") if r.strip()]
    except ValueError:
        ap.error(f"--rates: comma-separated numbers, got {args.rates!r}")
    if not rates or min(rates) <= 0 or args.seconds <= 0:
        ap.error("--rates and --seconds must be > 0")
    tmp = Path(tempfile.mkdtemp(prefix="blaze-slo-"))
    settings = private_settings("slo", tmp)
    engine = "blaze.dev.timed_engine:make"
    settings.registry_file.write_text(
        f"models:\n  fixed:\n    engine: {engine}\n    max_batch_size: {args.fixed_size}\n"
        f"    max_wait_s: {args.fixed_wait}\n"
        f"  slo:\n    engine: {engine}\n    max_batch_size: {args.ceiling}\n"
        f"    max_latency_s: {args.target}\n"
    )
    stack = Stack(settings)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        stack.up()
        settings = stack.settings
        env = {
            **os.environ,
            **settings.to_env(),
            "BLAZE_DEV_TIMED_FIXED_S": str(args.fixed_s),
            "BLAZE_DEV_TIMED_PER_JOB_S": str(args.per_job_s),
        }
        logs = tmp / "logs"
        logs.mkdir()
        for role, argv in (("worker", ["worker", "--device", "cpu"]), ("consumer", ["consume"])):
            log = logs / f"{role}.log"
            with log.open("wb") as fh:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "blaze", *argv],
                        env=env,
                        stdout=fh,
                        stderr=subprocess.STDOUT,
                    )
                )
            wait_for(log, " ready." if role == "worker" else "intake joined group", procs[-1])
        report: dict[str, dict[str, dict[str, float]]] = {}
        with Client(settings) as client:
            # the slo model's first batches are its measurements: one alone, one burst
            for model in ("fixed", "slo"):
                for n in (1, args.ceiling, 8):
                    warm = [LLMJob(model=model, prompt="warm", max_new_tokens=1) for _ in range(n)]
                    client.submit_many(warm)
                    client.wait([j.job_id for j in warm], timeout=120)
            time.sleep(2.5)  # the consumer reads the batch times at most every 2 s
            rng = random.Random(5)
            for k, rate in enumerate(rates):
                arrivals, t = [], rng.expovariate(rate)
                while t < args.seconds:
                    arrivals.append(t)
                    t += rng.expovariate(rate)
                order = ("fixed", "slo") if k % 2 == 0 else ("slo", "fixed")
                row = report.setdefault(f"{rate:g}", {})
                for model in order:
                    row[model] = run_rate(client, model, arrivals)
                    print(f"rate {rate:g}/s {model}: {row[model]}", file=sys.stderr, flush=True)
        print(f"{'rate/s':>7} {'model':<6}{'p50 s':>8}{'p95 s':>8}{'jobs/s':>8}{'batch':>7}")
        for rate_key, row in report.items():
            for model, r in row.items():
                print(
                    f"{rate_key:>7} {model:<6}{r['p50_s']:>8.3f}{r['p95_s']:>8.3f}"
                    f"{r['jobs_per_s']:>8.1f}{r['mean_batch']:>7.1f}"
                )
        print(json.dumps(report))
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        stop(procs, 30)
        stack.down()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
