"""Blaze against what users would otherwise run, on the same work, measured in one run.

Every contender runs the same model, the same chat prompts (``bench/prompts.jsonl``, 256 of
them), the same settings (``--new-tokens`` greedy tokens, batch size ``--batch``):

1. ``direct``: the Blaze LLM engine called in-process on batches, in the better of two layouts:
   one process with two torch threads, or two processes with one thread each (half the prompts
   each). The ceiling for this machine.
2. ``blaze``: the whole pipeline on a private stack: submit to Kafka, consumer, Celery workers
   (``--blaze-workers`` processes, 2 cores shared out), results in S3; timed from the first
   submit to the last result readable.
3. ``naive``: one Celery task per job calling the same model (batch size 1), on the same number
   of worker processes, results through Celery's Redis backend.
4. ``ray``: Ray Data ``map_batches`` with the same engine and batch size, in its better layout
   (one actor with two threads, or two actors with one thread each). Needs ``pip install
   'ray[data]'`` (an optional bench dependency); skipped otherwise.

Contenders are interleaved over ``--reps`` rounds so machine drift hits all alike; each figure
is the median. Model loading and warm-up are outside the timed part for every contender. Then a
latency mode: ``--latency-jobs`` jobs one at a time, ``--latency-gap`` seconds apart; the added
latency of the pipeline over the direct call, against the configured max batch wait.

Prints a table (jobs/s, tokens/s, p50/p95 job latency, peak RSS) and, as the last line, one
JSON object with ``blaze_over_direct``, ``blaze_over_naive``, ``blaze_over_ray`` and the
latency figures.

    .venv/bin/python bench/compare.py                          # the full comparison (~30 min)
    .venv/bin/python bench/compare.py --prompts 16 --reps 1 --model-dir DIR   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

PROMPTS_FILE = _HERE / "prompts.jsonl"
NAIVE_TASK = "bench.naive_generate"


# -- shared helpers ----------------------------------------------------------------------------
def load_prompts(n: int) -> list[str]:
    rows = [json.loads(x)["prompt"] for x in PROMPTS_FILE.read_text().splitlines() if x.strip()]
    if n > len(rows):
        sys.exit(f"compare: --prompts {n} is more than the {len(rows)} in {PROMPTS_FILE}")
    return rows[:n]


def make_engine(model_dir: str | None, dtype: str, threads: int) -> Any:
    import torch
    from transformers.utils import logging as hf_logging

    from engines.llm import TransformersLLM
    from engines.models import install_demo_model
    from pipelines.registry import DEMO_MODEL
    from pipelines.settings import BlazeSettings

    hf_logging.disable_progress_bar()
    torch.set_num_threads(threads)
    folder = Path(model_dir) if model_dir else install_demo_model(BlazeSettings())
    engine = TransformersLLM(DEMO_MODEL if not model_dir else folder.name, folder, dtype=dtype)
    engine.load("cpu")
    return engine


def jobs_for(engine: Any, prompts: list[str], new_tokens: int) -> list[Any]:
    from pipelines.jobs import ChatMessage, LLMJob

    return [
        LLMJob(
            job_id=f"j{i}",
            model=engine.name,
            messages=[ChatMessage(role="user", content=p)],
            max_new_tokens=new_tokens,
        )
        for i, p in enumerate(prompts)
    ]


def peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, kids) / 1024, 1)


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# -- child processes: one engine each, told when to start ----------------------------------------
def child_direct(args: argparse.Namespace) -> None:
    """Load, warm up, say ready, wait for 'go', run the prompts, print one JSON line."""
    engine = make_engine(args.model_dir, args.dtype, args.threads)
    prompts = load_prompts(args.prompts)[args.part :: args.parts]
    work = jobs_for(engine, prompts, args.new_tokens)
    engine.run(work[:2])
    print("ready", flush=True)
    sys.stdin.readline()
    t0 = time.perf_counter()
    tokens, latencies, calls = 0, [], []
    for start in range(0, len(work), args.batch):
        t_call = time.perf_counter()
        outs = engine.run(work[start : start + args.batch])
        tokens += sum(o.completion_tokens for o in outs)
        latencies += [time.perf_counter() - t0] * len(outs)
        calls += [time.perf_counter() - t_call] * len(outs)
    done = {"jobs": len(work), "tokens": tokens, "seconds": time.perf_counter() - t0}
    print(
        json.dumps({**done, "latencies": latencies, "calls": calls, "rss_mb": peak_rss_mb()}),
        flush=True,
    )


def child_ray(args: argparse.Namespace) -> None:
    import ray

    actors = args.parts
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    model_dir, dtype, threads = args.model_dir, args.dtype, args.threads

    class Generate:
        def __init__(self) -> None:
            self.engine = make_engine(model_dir, dtype, threads)

        def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
            started = time.time()
            work = jobs_for(self.engine, list(batch["prompt"]), args.new_tokens)
            outs = self.engine.run(work)
            return {
                "tokens": [o.completion_tokens for o in outs],
                "started": [started] * len(outs),
                "done": [time.time()] * len(outs),
            }

    prompts = load_prompts(args.prompts)
    warm = ray.data.from_items([{"prompt": p} for p in prompts[: 2 * actors]])
    warm.map_batches(Generate, batch_size=2, concurrency=actors, num_cpus=2 / actors).take_all()
    print("ready", flush=True)
    sys.stdin.readline()
    ds = ray.data.from_items([{"prompt": p} for p in prompts])
    rows = ds.map_batches(
        Generate, batch_size=args.batch, concurrency=actors, num_cpus=2 / actors
    ).take_all()
    # Each map_batches call starts fresh actors (and loads the model in each): time from the
    # first batch's start to the last batch's end so start-up is excluded, as for the others.
    t0 = min(r["started"] for r in rows)
    seconds = max(r["done"] for r in rows) - t0
    print(
        json.dumps(
            {
                "jobs": len(rows),
                "tokens": sum(r["tokens"] for r in rows),
                "seconds": seconds,
                "latencies": [r["done"] - t0 for r in rows],
                "rss_mb": peak_rss_mb(),
            }
        ),
        flush=True,
    )
    ray.shutdown()


def child_naive_worker(args: argparse.Namespace) -> None:
    """A Celery worker with one task per job: the model once per process, batch size 1."""
    from celery import Celery

    engine = make_engine(args.model_dir, args.dtype, args.threads)
    app = Celery("naive", broker=args.redis, backend=args.redis)
    app.conf.update(
        worker_prefetch_multiplier=1, task_acks_late=True, worker_hijack_root_logger=False
    )

    @app.task(name=NAIVE_TASK)  # type: ignore[untyped-decorator]
    def generate(prompt: str, new_tokens: int) -> int:
        out = engine.run(jobs_for(engine, [prompt], new_tokens))[0]
        return int(out.completion_tokens)

    engine.run(jobs_for(engine, ["warm up"], 2))
    app.worker_main(
        [
            "worker",
            "--pool",
            "solo",
            "--queues",
            args.queue,
            "--loglevel",
            "WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--hostname",
            f"naive{args.part}@%h",
        ]
    )


# -- the contenders, run from the parent ---------------------------------------------------------
def spawn(args: argparse.Namespace, mode: str, **extra: Any) -> subprocess.Popen[str]:
    """A child process; ``extra`` adds options (``prompts``/``batch`` override the run's)."""
    extra = {"prompts": args.prompts, "batch": args.batch, **extra}
    argv = [
        sys.executable,
        __file__,
        "--child",
        mode,
        "--new-tokens",
        str(args.new_tokens),
        "--dtype",
        args.dtype,
    ]
    if args.model_dir:
        argv += ["--model-dir", args.model_dir]
    for key, value in extra.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def run_children(procs: list[subprocess.Popen[str]]) -> dict[str, Any]:
    for p in procs:
        line = p.stdout.readline() if p.stdout else ""
        if line.strip() != "ready":
            raise RuntimeError(f"a contender process failed to start: {line!r}")
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = [json.loads(p.stdout.readline()) for p in procs if p.stdout]
    for p in procs:
        p.wait(60)
    return {
        "jobs": sum(o["jobs"] for o in outs),
        "tokens": sum(o["tokens"] for o in outs),
        "seconds": max(o["seconds"] for o in outs),  # they start together on "go"
        "latencies": [x for o in outs for x in o["latencies"]],
        "calls": [x for o in outs for x in o.get("calls", [])],
        "rss_mb": sum(o["rss_mb"] for o in outs),
    }


def run_direct(args: argparse.Namespace, layout: str) -> dict[str, Any]:
    if layout == "1x2":
        return run_children([spawn(args, "direct", threads=2, part=0, parts=1)])
    return run_children([spawn(args, "direct", threads=1, part=i, parts=2) for i in range(2)])


def run_ray(args: argparse.Namespace, layout: str) -> dict[str, Any]:
    if layout == "1x2":
        return run_children([spawn(args, "ray", threads=2, part=0, parts=1)])
    return run_children([spawn(args, "ray", threads=1, part=0, parts=2)])


class Pipeline:
    """A private stack with Blaze workers, a consumer, and naive Celery workers beside them."""

    def __init__(self, args: argparse.Namespace) -> None:
        from infra.stack import Stack, free_stack_ports
        from pipelines.registry import DEMO_MODEL
        from pipelines.settings import BlazeSettings

        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="blaze-compare-"))
        model_dir = Path(args.model_dir) if args.model_dir else None
        self.model = model_dir.name if model_dir else DEMO_MODEL
        self.settings = BlazeSettings(
            namespace="compare",
            models_dir=model_dir.parent if model_dir else BlazeSettings().models_dir.resolve(),
            registry_file=self.tmp / "models.yaml",
            stack={"state_dir": self.tmp / "stack", **free_stack_ports()},
            batch={"max_size": args.batch, "max_wait_s": args.max_wait, "max_queued_batches": 2},
            worker={"torch_threads": 2 // args.blaze_workers or 1},
        )
        self.settings.registry_file.write_text(
            f"models:\n  {self.model}:\n    dtype: {args.dtype}\n    max_batch_size: {args.batch}\n"
            f"    max_wait_s: {args.max_wait}\n"
        )
        self.env = {**os.environ, **self.settings.to_env()}
        self.stack = Stack(self.settings)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.naive: list[subprocess.Popen[str]] = []

    def __enter__(self) -> Pipeline:
        self.stack.up()
        cli = [sys.executable, "-m", "pipelines.cli"]
        logs = self.tmp / "logs"
        logs.mkdir()
        for i in range(self.args.blaze_workers):
            log = logs / f"worker{i}.log"
            with log.open("wb") as fh:
                self.procs.append(
                    subprocess.Popen(
                        [*cli, "worker", "--device", "cpu", "--model", self.model],
                        env=self.env,
                        stdout=fh,
                        stderr=subprocess.STDOUT,
                    )
                )
            self._wait(log, " ready.")
        clog = logs / "consumer.log"
        with clog.open("wb") as fh:
            self.procs.append(
                subprocess.Popen(
                    [*cli, "consume"], env=self.env, stdout=fh, stderr=subprocess.STDOUT
                )
            )
        self._wait(clog, "intake joined group")
        self.blaze([f"warm up {i}" for i in range(2 * self.args.blaze_workers)])
        return self

    def _wait(self, log: Path, text: str) -> None:
        deadline = time.monotonic() + 300
        while text not in log.read_text(errors="replace"):
            if time.monotonic() > deadline:
                sys.exit(f"compare: {log.name} never said {text!r}:\n{log.read_text()[-2000:]}")
            time.sleep(0.2)

    def blaze(self, prompts: list[str], gap: float = 0.0) -> dict[str, Any]:
        from pipelines.client import Client
        from pipelines.jobs import ChatMessage, LLMJob

        jobs = [
            LLMJob(
                model=self.model,
                messages=[ChatMessage(role="user", content=p)],
                max_new_tokens=self.args.new_tokens,
            )
            for p in prompts
        ]
        ping = LLMJob(model=self.model, prompt="ping", max_new_tokens=1)
        with Client(self.settings) as client:
            client.submit_many([ping])  # producer connected before the clock starts
            client.wait([ping.job_id], timeout=600)
            cpu0 = self.cpu()
            t0 = time.time()
            submitted: dict[str, float] = {}
            waited: dict[str, float] = {}
            if gap:  # one job at a time: submit, wait until its state says succeeded
                for job in jobs:
                    submitted[job.job_id] = time.time()
                    client.submit_many([job])
                    client.wait([job.job_id], timeout=600, poll_s=0.005)
                    waited[job.job_id] = time.time() - submitted[job.job_id]
                    time.sleep(gap)
            else:
                client.submit_many(jobs)
                submitted = {j.job_id: t0 for j in jobs}
            ids = list(submitted)
            client.wait(ids, timeout=3600, poll_s=0.1)
            seconds = time.time() - t0
            cpu = {k: round(v - cpu0.get(k, 0.0), 2) for k, v in self.cpu().items()}
            docs = [client.result(j) for j in ids]
        tokens = sum(d.usage.completion_tokens for d in docs if d is not None)
        # A job is done when its result document is written (created_at, set by the worker).
        lat = [
            waited.get(d.job_id, d.created_at.timestamp() - submitted[d.job_id])
            for d in docs
            if d is not None
        ]
        if not gap:
            print(
                f"  cpu seconds during the run: {json.dumps(cpu)} (wall {seconds:.1f} s)",
                file=sys.stderr,
                flush=True,
            )
        return {
            "jobs": len(ids),
            "tokens": tokens,
            "seconds": seconds,
            "latencies": lat,
            "rss_mb": self.rss_mb(self.procs),
        }

    def start_naive(self) -> None:
        redis = self.settings.redis_url.replace("/0", "/1")
        for i in range(self.args.blaze_workers):
            self.naive.append(
                spawn(
                    self.args,
                    "naive-worker",
                    threads=2 // self.args.blaze_workers or 1,
                    part=i,
                    redis=redis,
                    queue="naive",
                )
            )
        from celery import Celery

        self.celery = Celery("naive-client", broker=redis, backend=redis)
        self.celery.send_task(NAIVE_TASK, args=["warm", 2], queue="naive").get(timeout=600)

    def run_naive(self, prompts: list[str]) -> dict[str, Any]:
        t0 = time.time()
        results = [
            self.celery.send_task(NAIVE_TASK, args=[p, self.args.new_tokens], queue="naive")
            for p in prompts
        ]
        tokens, lat = 0, []
        for r in results:
            tokens += int(r.get(timeout=3600))
            lat.append(r.date_done.timestamp() - t0 if r.date_done else time.time() - t0)
        return {
            "jobs": len(prompts),
            "tokens": tokens,
            "seconds": time.time() - t0,
            "latencies": lat,
            "rss_mb": self.rss_mb(self.naive),
        }

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far by each part of the pipeline (for the profile line)."""
        parts = {f"worker{i}": p.pid for i, p in enumerate(self.procs[:-1])}
        parts["consumer"] = self.procs[-1].pid
        parts.update({s.name: s.pid for s in self.stack.status() if s.pid})
        parts["client (this process)"] = os.getpid()
        tick = os.sysconf("SC_CLK_TCK")
        out = {}
        for name, pid in parts.items():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                out[name] = (int(fields[11]) + int(fields[12])) / tick
            except (OSError, IndexError, ValueError):
                continue
        return out

    @staticmethod
    def rss_mb(procs: list[Any]) -> float:
        total = 0.0
        for p in procs:
            try:
                for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1]) / 1024
            except OSError:
                pass
        return round(total, 1)

    def __exit__(self, *exc: object) -> None:
        for p in [*self.procs, *self.naive]:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in [*self.procs, *self.naive]:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        self.stack.down()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--model-dir", default=None, help="an LLM folder (default: the demo model)")
    ap.add_argument("--contenders", default="direct,blaze,naive,ray")
    ap.add_argument("--blaze-workers", type=int, default=2, help="worker processes (2 cores)")
    ap.add_argument("--max-wait", type=float, default=0.05, help="batch window, seconds")
    ap.add_argument("--latency-jobs", type=int, default=12)
    ap.add_argument("--latency-gap", type=float, default=1.0)
    # child-process options
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    ap.add_argument("--part", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--parts", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--redis", default="", help=argparse.SUPPRESS)
    ap.add_argument("--queue", default="naive", help=argparse.SUPPRESS)
    args = ap.parse_args()
    for name in ("prompts", "batch", "new_tokens", "reps", "blaze_workers"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.child:
        {"direct": child_direct, "ray": child_ray, "naive-worker": child_naive_worker}[args.child](
            args
        )
        return
    wanted = [c.strip() for c in args.contenders.split(",") if c.strip()]
    unknown = set(wanted) - {"direct", "blaze", "naive", "ray"}
    if unknown or "blaze" not in wanted:
        ap.error(f"--contenders: blaze plus any of direct, naive, ray (got {args.contenders!r})")
    if "ray" in wanted:
        try:
            import ray  # noqa: F401
        except ImportError:
            print("ray: not installed (pip install 'ray[data]'); skipped", file=sys.stderr)
            wanted.remove("ray")
    prompts = load_prompts(args.prompts)
    runs: dict[str, list[dict[str, Any]]] = {}
    with Pipeline(args) as pipe:
        if "naive" in wanted:
            pipe.start_naive()
        for rep in range(args.reps):
            for name in wanted:
                layouts = ["1x2", "2x1"] if name in ("direct", "ray") else [""]
                for layout in layouts:
                    key = f"{name} {layout}".strip()
                    if name == "blaze":
                        got = pipe.blaze(prompts)
                    elif name == "naive":
                        got = pipe.run_naive(prompts)
                    elif name == "direct":
                        got = run_direct(args, layout)
                    else:
                        got = run_ray(args, layout)
                    runs.setdefault(key, []).append(got)
                    print(
                        f"[round {rep + 1}] {key}: {got['jobs'] / got['seconds']:.2f} jobs/s",
                        file=sys.stderr,
                        flush=True,
                    )
        # latency mode: the same prompts one at a time through Blaze, and alone on the engine
        latency = pipe.blaze(prompts[: args.latency_jobs], gap=args.latency_gap)
        # alone on the engine with the threads one Blaze worker has: like for like
        threads = max(1, 2 // args.blaze_workers)
        alone = run_children(
            [
                spawn(
                    args,
                    "direct",
                    threads=threads,
                    part=0,
                    parts=1,
                    prompts=args.latency_jobs,
                    batch=1,
                )
            ]
        )
    report(args, runs, latency, alone)


def report(
    args: argparse.Namespace,
    runs: dict[str, list[dict[str, Any]]],
    latency: dict[str, Any],
    alone: dict[str, Any],
) -> None:
    rows = {}
    for key, got in runs.items():
        rows[key] = {
            "jobs_per_s": statistics.median(g["jobs"] / g["seconds"] for g in got),
            "tokens_per_s": statistics.median(g["tokens"] / g["seconds"] for g in got),
            "p50_s": statistics.median(pct(g["latencies"], 0.5) for g in got),
            "p95_s": statistics.median(pct(g["latencies"], 0.95) for g in got),
            "rss_mb": max(g["rss_mb"] for g in got),
        }
    print(
        f"{'contender':<12}{'jobs/s':>9}{'tokens/s':>10}{'p50 s':>8}{'p95 s':>8}{'RSS MB':>9}"
        f"   (median of {args.reps}, {args.prompts} prompts, batch {args.batch})"
    )
    for key, r in rows.items():
        print(
            f"{key:<12}{r['jobs_per_s']:>9.2f}{r['tokens_per_s']:>10.1f}{r['p50_s']:>8.2f}"
            f"{r['p95_s']:>8.2f}{r['rss_mb']:>9.0f}"
        )

    def best(name: str) -> float | None:
        found = [r["jobs_per_s"] for k, r in rows.items() if k.split()[0] == name]
        return max(found) if found else None

    blaze = best("blaze") or 0.0
    ratios = {
        f"blaze_over_{name}": (round(blaze / b, 3) if (b := best(name)) else None)
        for name in ("direct", "naive", "ray")
    }
    # added latency per job: through Blaze minus the same prompt alone on the engine
    added = [b - a for b, a in zip(latency["latencies"], alone["calls"], strict=False)]
    print(
        f"\nlatency mode ({len(added)} jobs, one every {args.latency_gap}s): engine alone p50 "
        f"{pct(alone['calls'], 0.5):.3f}s; through Blaze p50 {pct(latency['latencies'], 0.5):.3f}"
        f"s; added p50 {pct(added, 0.5) * 1000:.0f} ms, p95 {pct(added, 0.95) * 1000:.0f} ms "
        f"(max wait {args.max_wait * 1000:.0f} ms)"
    )
    print(
        json.dumps(
            {
                **ratios,
                "added_latency_p50_ms": round(pct(added, 0.5) * 1000, 1),
                "added_latency_p95_ms": round(pct(added, 0.95) * 1000, 1),
                "max_wait_ms": round(args.max_wait * 1000, 1),
                "table": {k: {m: round(v, 3) for m, v in r.items()} for k, r in rows.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
