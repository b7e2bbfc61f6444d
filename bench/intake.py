"""Intake throughput: Kafka → consumer → Celery → worker → S3 results, with a no-op engine.

Runs a private embedded stack on free ports, one consumer and N worker processes serving an
``echo`` model (no model compute), submits jobs with the SDK and times first submit to last
terminal status. Prints a table, then as the last line one JSON object with at least
``jobs_per_s``, ``batch_fill`` (mean dispatched batch size / max batch size, 0-1) and
``results_read`` (jobs whose result document was read back, with the right answer, after the
timed part; ``read_jobs_per_s`` is how fast that read-back went).

    .venv/bin/python bench/intake.py --jobs 5000 --batch 64 --workers 2
    .venv/bin/python bench/intake.py --metrics both --rounds 3   # what the metrics cost
    .venv/bin/python bench/intake.py --layout batch              # one result object per batch
"""

from __future__ import annotations

import argparse
import json
import os
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
from pipelines.results import LLMResult, parse_result
from pipelines.settings import BlazeSettings
from pipelines.stores.batch_results import read_results


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a live process has used (all its threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_now(procs: dict[str, list[int]]) -> dict[str, float]:
    return {name: sum(cpu_seconds(p) for p in pids) for name, pids in procs.items()}


def run_once(
    settings: BlazeSettings,
    logs: Path,
    args: argparse.Namespace,
    namespace: str,
    metrics: bool,
    services: dict[str, list[int]] | None = None,
) -> dict[str, object]:
    """One measured run on a fresh namespace: start workers and a consumer, submit, wait.

    Also where the CPU went: milliseconds per job of this process (the SDK: submit and wait),
    the consumer, the workers and each service of ``services``, over the timed part."""
    settings = settings.model_copy(
        update={
            "namespace": namespace,
            "observe": settings.observe.model_copy(update={"enabled": metrics}),
        }
    )
    env = {**os.environ, **settings.to_env()}

    def cli(name: str) -> list[str]:
        if args.profile:  # cProfile every Blaze process (slower; for where the time goes)
            out = Path(args.profile) / f"{namespace}-{name}.prof"
            return [sys.executable, "-m", "cProfile", "-o", str(out), "-m", "blaze"]
        return [sys.executable, "-m", "blaze"]

    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(args.workers):
            log = logs / f"{namespace}-worker{i}.log"
            with log.open("wb") as fh:
                procs.append(
                    subprocess.Popen(
                        [*cli(f"worker{i}"), "worker", "--device", "cpu"],
                        env=env,
                        stdout=fh,
                        stderr=subprocess.STDOUT,
                    )
                )
            wait_for(log, " ready.", procs[-1])
        clog = logs / f"{namespace}-consumer.log"
        with clog.open("wb") as fh:
            consumer = subprocess.Popen(
                [*cli("consumer"), "consume"], env=env, stdout=fh, stderr=subprocess.STDOUT
            )
        procs.append(consumer)
        wait_for(clog, "intake joined group", consumer)

        with Client(settings) as client:
            warm = client.submit_many([LLMJob(model="noop", prompt="warm-up")])
            client.wait([warm[0].job_id], timeout=60)
            jobs = [
                LLMJob(model="noop", prompt=f"job {i}", max_new_tokens=1) for i in range(args.jobs)
            ]
            pids = {
                **(services or {}),
                "sdk": [os.getpid()],
                "consumer": [consumer.pid],
                "workers": [p.pid for p in procs[:-1]],
            }
            cpu0 = cpu_now(pids)
            t0 = time.perf_counter()
            handles = client.submit_many(jobs)
            t_submit = time.perf_counter() - t0
            final = client.wait([h.job_id for h in handles], timeout=600, poll_s=0.05)
            elapsed = time.perf_counter() - t0
            cpu1 = cpu_now(pids)
            # the invariant, outside the intake's time: every job's result document is there,
            # with its answer (timed on its own: what reading a run back costs)
            t_read = time.perf_counter()
            docs = read_results(
                settings, client.result_store, client.status_store, [h.job_id for h in handles]
            )
            t_read = time.perf_counter() - t_read
            answers = {j.job_id: j.prompt for j in jobs}
            readable = 0
            for jid, raw in docs.items():
                doc = parse_result(raw) if raw is not None else None
                readable += isinstance(doc, LLMResult) and doc.text == answers[jid]
        ok = sum(s.state.value == "succeeded" for s in final.values())
        consumer.send_signal(signal.SIGTERM)
        consumer.wait(60)
        line = next(
            (ln for ln in clog.read_text().splitlines()[::-1] if "intake stopped: " in ln), None
        )
        stats = json.loads(line.split("intake stopped: ", 1)[1]) if line else {}
        # the warm-up job is one batch of one; leave it out of the fill
        batches = max(1, stats.get("batches", 1) - 1)
        mean_batch = (stats.get("dispatched_jobs", 1) - 1) / batches
        return {
            "jobs": args.jobs,
            "succeeded": ok,
            "results_read": readable,
            "layout": settings.s3.layout,
            "workers": args.workers,
            "max_batch": args.batch,
            "metrics": metrics,
            "jobs_per_s": round(args.jobs / elapsed, 1),
            "submit_jobs_per_s": round(args.jobs / t_submit, 1),
            "read_jobs_per_s": round(args.jobs / t_read, 1),
            "batch_fill": round(mean_batch / args.batch, 3),
            "mean_batch_size": round(mean_batch, 1),
            "batches": batches,
            "pauses": stats.get("pauses", 0),
            "seconds": round(elapsed, 2),
            "cpu_ms_per_job": {
                k: round(1000 * (cpu1[k] - cpu0[k]) / args.jobs, 3) for k in sorted(cpu0)
            },
        }
    finally:
        stop(procs, 30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--jobs", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=64, help="max batch size of the echo model")
    ap.add_argument("--wait", type=float, default=0.2, help="max batch wait, seconds")
    ap.add_argument("--workers", type=int, default=1, help="worker processes on the cpu queue")
    ap.add_argument(
        "--metrics",
        choices=["on", "off", "both"],
        default="on",
        help="metrics, probes and heartbeats on, off, or both interleaved (their cost)",
    )
    ap.add_argument("--rounds", type=int, default=3, help="rounds of on/off with --metrics both")
    ap.add_argument(
        "--layout",
        choices=["job", "batch"],
        default="job",
        help="results: one object per job, or one per batch (BLAZE_S3__LAYOUT)",
    )
    ap.add_argument(
        "--profile", metavar="DIR", help="cProfile the consumer and workers into DIR/*.prof"
    )
    args = ap.parse_args()
    for name in ("jobs", "batch", "workers", "rounds"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be >= 1")
    if args.profile:  # made now: the processes write there only as they exit, too late to say
        folder = Path(args.profile).resolve()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            ap.error(f"--profile {args.profile}: not a folder that can be written ({exc})")
        args.profile = str(folder)

    tmp = Path(tempfile.mkdtemp(prefix="blaze-bench-"))
    settings = private_settings(
        "bench",
        tmp,
        batch={"max_size": args.batch, "max_wait_s": args.wait, "max_queued_batches": 8},
        s3={"layout": args.layout},
    )
    settings.registry_file.write_text(
        f"models:\n  noop:\n    engine: echo\n    max_batch_size: {args.batch}\n"
        f"    max_wait_s: {args.wait}\n"
    )
    stack = Stack(settings)
    try:
        stack.up()
        settings = stack.settings  # with the credentials the stack generated
        services = {st.name: [st.pid] for st in stack.status() if st.pid is not None}
        logs = tmp / "logs"
        logs.mkdir()
        if args.metrics != "both":
            result = run_once(settings, logs, args, "bench", args.metrics == "on", services)
        else:
            runs: dict[bool, list[dict[str, object]]] = {True: [], False: []}
            for r in range(args.rounds):
                # alternate which goes first, so drift in the machine hits both alike
                for on in (True, False) if r % 2 == 0 else (False, True):
                    got = run_once(settings, logs, args, f"bench{r}{int(on)}", on, services)
                    runs[on].append(got)
                    print(
                        f"round {r + 1} metrics {'on ' if on else 'off'}: "
                        f"{got['jobs_per_s']} jobs/s, {got['succeeded']}/{got['jobs']} succeeded, "
                        f"batch fill {got['batch_fill']}",
                        flush=True,
                    )
            ratios = [
                float(a["jobs_per_s"]) / float(b["jobs_per_s"])  # type: ignore[arg-type]
                for a, b in zip(runs[True], runs[False], strict=True)
            ]
            result = {
                **runs[True][-1],
                "metrics": "both",
                "jobs_per_s_on": [x["jobs_per_s"] for x in runs[True]],
                "jobs_per_s_off": [x["jobs_per_s"] for x in runs[False]],
                "on_over_off": round(statistics.median(ratios), 4),
                "on_over_off_rounds": [round(x, 4) for x in ratios],
                "metrics_cost": round(1 - statistics.median(ratios), 4),
                # the invariants: every job of every run succeeded, whatever the mode
                "all_succeeded": all(
                    x["succeeded"] == x["jobs"] for xs in runs.values() for x in xs
                ),
                "batch_fill_min": min(float(x["batch_fill"]) for xs in runs.values() for x in xs),  # type: ignore[arg-type]
            }
        print(f"{'metric':<20}value")
        for key, value in result.items():
            print(f"{key:<20}{value}")
        print(json.dumps(result))
    finally:
        stack.down()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
