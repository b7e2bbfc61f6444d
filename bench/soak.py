"""Soak: many no-op jobs through one consumer and one worker, their memory sampled throughout.

Runs a private embedded stack, one ``blaze consume`` and one ``blaze worker`` serving an
``echo`` model, and streams jobs in chunks (at most ``--in-flight`` unfinished). After every
chunk it reads both processes' resident memory (``/proc/PID/status``). Prints the samples, then
as the last line one JSON object: RSS of each process when 10 % of the jobs were done and at
the end, and ``growth`` (end / 10 % mark - 1, per process); ``succeeded`` must equal ``jobs``.

    .venv/bin/python bench/soak.py                 # 100,000 jobs (about 5 minutes here)
    .venv/bin/python bench/soak.py --jobs 20000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchkit import private_settings, stop, wait_for

from infra.stack import Stack
from pipelines.client import Client
from pipelines.jobs import LLMJob


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--chunk", type=int, default=2000)
    ap.add_argument("--in-flight", type=int, default=10_000)
    args = ap.parse_args()
    if args.jobs < 10 or args.chunk < 1 or args.in_flight < args.chunk:
        ap.error("need --jobs >= 10, --chunk >= 1 and --in-flight >= --chunk")

    tmp = Path(tempfile.mkdtemp(prefix="blaze-soak-"))
    settings = private_settings(
        "soak",
        tmp,
        batch={"max_size": 64, "max_wait_s": 0.2, "max_queued_batches": 8},
    )
    settings.registry_file.write_text(
        "models:\n  noop:\n    engine: echo\n    max_batch_size: 64\n"
    )
    stack = Stack(settings)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    samples: list[dict[str, float]] = []
    try:
        stack.up()
        settings = stack.settings
        env = {**os.environ, **settings.to_env()}
        cli = [sys.executable, "-m", "blaze"]
        for name, cmd, ready in (
            ("worker", [*cli, "worker", "--device", "cpu", "--kind", "llm"], " ready."),
            ("consumer", [*cli, "consume"], "intake joined group"),
        ):
            log = tmp / f"{name}.log"
            with log.open("wb") as fh:
                procs[name] = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
            wait_for(log, ready, procs[name])
        t0 = time.perf_counter()
        done = succeeded = 0
        pending: list[list[str]] = []
        with Client(settings) as client:
            for start in range(0, args.jobs, args.chunk):
                n = min(args.chunk, args.jobs - start)
                jobs = [
                    LLMJob(model="noop", prompt=f"soak {start + i}", max_new_tokens=1)
                    for i in range(n)
                ]
                client.submit_many(jobs)
                pending.append([j.job_id for j in jobs])
                while pending and (
                    sum(map(len, pending)) > args.in_flight or start + n >= args.jobs
                ):
                    ids = pending.pop(0)
                    final = client.wait(ids, timeout=600, poll_s=0.2)
                    done += len(ids)
                    succeeded += sum(s.state.value == "succeeded" for s in final.values())
                    sample = {
                        "done": done,
                        "seconds": round(time.perf_counter() - t0, 1),
                        **{f"{k}_rss_mb": round(rss_mb(p.pid), 1) for k, p in procs.items()},
                    }
                    samples.append(sample)
                    print(json.dumps(sample), flush=True)
        mark = next(s for s in samples if s["done"] >= args.jobs // 10)
        end = samples[-1]
        out = {
            "jobs": args.jobs,
            "succeeded": succeeded,
            "seconds": end["seconds"],
            "at_10pct": mark,
            "at_end": end,
            "growth": {k: round(end[f"{k}_rss_mb"] / mark[f"{k}_rss_mb"] - 1, 4) for k in procs},
        }
        print(json.dumps(out))
    finally:
        stop(procs.values())
        stack.down()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
