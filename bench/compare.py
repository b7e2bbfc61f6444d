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
   'ray[data]'`` (an optional bench dependency); skipped otherwise. Ray itself is started
   beforehand (as Blaze's stack and workers are), but each run starts its actors and loads the
   model in each, as every Ray Data run does: ``ray`` times the run from the call, ``ray ...
   warm`` from its first batch (start-up excluded).

Contenders are interleaved over ``--reps`` rounds so machine drift hits all alike, in the
given order in odd rounds and in reverse in even ones, so that none always runs last; each
figure is the median. Model loading and warm-up are outside the timed part for direct, Blaze
and naive (their processes outlive a run). Then a latency mode: ``--latency-jobs`` jobs one at
a time, ``--latency-gap`` seconds apart, each preceded by the same prompt alone on the engine
in a separate process: the added latency of the pipeline over the engine call inside the
worker, and over the call alone, against the configured max batch wait.

Prints a table (jobs/s, tokens/s, p50/p95 job latency, peak RSS) and, as the last line, one
JSON object with ``blaze_over_direct``, ``blaze_over_naive``, ``blaze_over_ray``
(``blaze_over_ray_warm``) and the latency figures.

    .venv/bin/python bench/compare.py                          # the full comparison (~35 min)
    .venv/bin/python bench/compare.py --prompts 16 --reps 1 --model-dir DIR   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent

PROMPTS_FILE = _HERE / "prompts.jsonl"
NAIVE_TASK = "bench.naive_generate"
MIXED_SEED = 17
CB_BATCHES = 4


# -- shared helpers ----------------------------------------------------------------------------
def load_prompts(n: int) -> list[str]:
    rows = [json.loads(x)["prompt"] for x in PROMPTS_FILE.read_text().splitlines() if x.strip()]
    if n > len(rows):
        sys.exit(f"compare: --prompts {n} is more than the {len(rows)} in {PROMPTS_FILE}")
    return rows[:n]


def token_limits(args: argparse.Namespace, n: int) -> list[int]:
    """``max_new_tokens`` of each prompt: ``--new-tokens`` for all (uniform), or drawn from
    8 to ``--mixed-max`` by a fixed seed (mixed), the same for every contender."""
    if args.workload == "uniform":
        return [args.new_tokens] * n
    rng = random.Random(MIXED_SEED)
    return [rng.randint(8, args.mixed_max) for _ in range(n)]


def make_engine(model_dir: str | None, dtype: str, threads: int) -> Any:
    import torch
    from transformers.utils import logging as hf_logging

    from engines.llm import TransformersLLM
    from engines.sources import install_demo_model
    from pipelines.registry import DEMO_MODEL
    from pipelines.settings import BlazeSettings

    hf_logging.disable_progress_bar()
    torch.set_num_threads(threads)
    folder = Path(model_dir) if model_dir else install_demo_model(BlazeSettings())
    engine = TransformersLLM(DEMO_MODEL if not model_dir else folder.name, folder, dtype=dtype)
    engine.load("cpu")
    return engine


def jobs_for(engine: Any, prompts: list[str], new_tokens: int | list[int]) -> list[Any]:
    from pipelines.jobs import ChatMessage, LLMJob

    limits = new_tokens if isinstance(new_tokens, list) else [new_tokens] * len(prompts)
    return [
        LLMJob(
            job_id=f"j{i}",
            model=engine.name,
            messages=[ChatMessage(role="user", content=p)],
            max_new_tokens=n,
        )
        for i, (p, n) in enumerate(zip(prompts, limits, strict=True))
    ]


def batch_sizes(per_job: list[int]) -> list[int]:
    """The engine calls behind a run, from each job's batch size (n jobs of size n = 1 call)."""
    count = Counter(per_job)
    return [n for n in sorted(count, reverse=True) for _ in range(count[n] // n)]


def peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, kids) / 1024, 1)


def table(rows: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    return {k: {m: round(v, 3) for m, v in r.items()} for k, r in rows.items()}


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# -- child processes: one engine each, told when to start ----------------------------------------
def child_direct(args: argparse.Namespace) -> None:
    """Load, warm up, say ready, wait for 'go', run the prompts, print one JSON line."""
    engine = make_engine(args.model_dir, args.dtype, args.threads)
    every = load_prompts(args.prompts)
    limits = token_limits(args, len(every))[args.part :: args.parts]
    work = jobs_for(engine, every[args.part :: args.parts], limits)
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


def child_serve(args: argparse.Namespace) -> None:
    """The engine alone, one prompt per call on request: reads a prompt index per line and
    answers with the call's seconds (the latency mode's direct call, interleaved with Blaze)."""
    engine = make_engine(args.model_dir, args.dtype, args.threads)
    work = jobs_for(engine, load_prompts(args.prompts), args.new_tokens)
    engine.run(work[:1])
    print("ready", flush=True)
    for line in sys.stdin:
        t0 = time.perf_counter()
        engine.run([work[int(line)]])
        print(time.perf_counter() - t0, flush=True)


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
            work = jobs_for(self.engine, list(batch["prompt"]), [int(n) for n in batch["tokens"]])
            outs = self.engine.run(work)
            return {
                "tokens": [o.completion_tokens for o in outs],
                "started": [started] * len(outs),
                "done": [time.time()] * len(outs),
            }

    prompts = load_prompts(args.prompts)
    limits = token_limits(args, len(prompts))
    items = [{"prompt": p, "tokens": n} for p, n in zip(prompts, limits, strict=True)]
    warm = ray.data.from_items(items[: 2 * actors])
    warm.map_batches(Generate, batch_size=2, concurrency=actors, num_cpus=2 / actors).take_all()
    print("ready", flush=True)
    sys.stdin.readline()
    # Ray is up (as Blaze's stack is); a run starts its actors and loads the model in each,
    # which a Ray Data user pays on every run. "warm" times from the first batch instead.
    t_call = time.time()
    ds = ray.data.from_items(items)
    rows = ds.map_batches(
        Generate, batch_size=args.batch, concurrency=actors, num_cpus=2 / actors
    ).take_all()
    t_first = min(r["started"] for r in rows)
    t_last = max(r["done"] for r in rows)
    print(
        json.dumps(
            {
                "jobs": len(rows),
                "tokens": sum(r["tokens"] for r in rows),
                "seconds": t_last - t_call,
                "warm_seconds": t_last - t_first,
                "latencies": [r["done"] - t_call for r in rows],
                "warm_latencies": [r["done"] - t_first for r in rows],
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
        "--workload",
        args.workload,
        "--mixed-max",
        str(args.mixed_max),
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
        **(
            {
                "warm_seconds": max(o["warm_seconds"] for o in outs),
                "warm_latencies": [x for o in outs for x in o["warm_latencies"]],
            }
            if all("warm_seconds" in o for o in outs)
            else {}
        ),
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
            # every round asks the same prompts: the result cache would answer Blaze's from the
            # first round (hundreds of jobs/s), so it is off, as the others have none
            cache={"enabled": False},
            worker={
                "torch_threads": 2 // args.blaze_workers or 1,
                "batches_in_hand": args.batches_in_hand,
            },
        )
        folder = model_dir or self.settings.models_dir / self.model
        # the same model with continuous generation: batches of up to CB_BATCHES x --batch jobs
        # handed to a worker, of which --batch rows are computed at once (as the others do)
        self.cb_model = f"{self.model}-continuous"
        self.settings.registry_file.write_text(
            f"models:\n  {self.model}:\n    dtype: {args.dtype}\n    max_batch_size: {args.batch}\n"
            f"    max_wait_s: {args.max_wait}\n"
            f"  {self.cb_model}:\n    source: {folder}\n    dtype: {args.dtype}\n"
            f"    generation: continuous\n    max_rows: {args.batch}\n"
            f"    max_batch_size: {CB_BATCHES * args.batch}\n    max_wait_s: {args.max_wait}\n"
        )
        self.env = {**os.environ, **self.settings.to_env()}
        self.stack = Stack(self.settings)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.naive: list[subprocess.Popen[str]] = []

    def __enter__(self) -> Pipeline:
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        self.stack.up()
        self.settings = self.stack.settings  # with the credentials the stack generated
        cli = [sys.executable, "-m", "blaze"]
        logs = self.tmp / "logs"
        logs.mkdir()
        for i in range(self.args.blaze_workers):
            log = logs / f"worker{i}.log"
            with log.open("wb") as fh:
                self.procs.append(
                    subprocess.Popen(
                        [*cli, "worker", "--device", "cpu", "--model", self.model]
                        + (["--model", self.cb_model] if self.args.continuous else []),
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
        warm = [f"warm up {i}" for i in range(2 * self.args.blaze_workers)]
        self.blaze(warm)
        if self.args.continuous:
            self.blaze(warm, self.cb_model)

    def _wait(self, log: Path, text: str) -> None:
        deadline = time.monotonic() + 300
        while text not in log.read_text(errors="replace"):
            if time.monotonic() > deadline:
                sys.exit(f"compare: {log.name} never said {text!r}:\n{log.read_text()[-2000:]}")
            time.sleep(0.2)

    def _jobs(
        self, prompts: list[str], model: str | None = None, limits: list[int] | None = None
    ) -> list[Any]:
        from pipelines.jobs import ChatMessage, LLMJob

        limits = limits or token_limits(self.args, len(prompts))
        return [
            LLMJob(
                model=model or self.model,
                messages=[ChatMessage(role="user", content=p)],
                max_new_tokens=n,
            )
            for p, n in zip(prompts, limits, strict=True)
        ]

    def _client(self) -> Any:
        """A client whose producer is connected (one job through) before any clock starts."""
        from pipelines.client import Client
        from pipelines.jobs import LLMJob

        client = Client(self.settings)
        ping = LLMJob(model=self.model, prompt="ping", max_new_tokens=1)
        client.submit_many([ping])
        client.wait([ping.job_id], timeout=600)
        return client

    def blaze(self, prompts: list[str], model: str | None = None) -> dict[str, Any]:
        """Every prompt submitted at once; timed from the first submit to the last result."""
        jobs = self._jobs(prompts, model)
        with self._client() as client:
            cpu0 = self.cpu()
            t0 = time.time()
            client.submit_many(jobs)
            ids = [j.job_id for j in jobs]
            client.wait(ids, timeout=3600, poll_s=0.1)
            seconds = time.time() - t0
            cpu = {k: round(v - cpu0.get(k, 0.0), 2) for k, v in self.cpu().items()}
            docs = [d for d in (client.result(j) for j in ids) if d is not None]
        calls = batch_sizes([int(d.provenance["batch_size"]) for d in docs])
        print(
            f"  cpu seconds during the run: {json.dumps(cpu)} (wall {seconds:.1f} s); "
            f"{len(calls)} engine calls, sizes {calls}",
            file=sys.stderr,
            flush=True,
        )
        return {
            "jobs": len(ids),
            "tokens": sum(d.usage.completion_tokens for d in docs),
            "seconds": seconds,
            # a job is done when its result document is written (created_at, set by the worker)
            "latencies": [d.created_at.timestamp() - t0 for d in docs],
            "rss_mb": self.rss_mb(self.procs),
        }

    def latency(self, prompts: list[str], gap: float) -> dict[str, list[float]]:
        """Jobs one at a time, ``gap`` seconds apart, each also run alone on the engine in a
        separate process just before it (interleaved, so drift hits both alike)."""
        threads = max(1, 2 // self.args.blaze_workers)  # what one Blaze worker has
        direct = spawn(self.args, "serve", threads=threads, prompts=len(prompts))
        assert direct.stdin is not None and direct.stdout is not None
        if direct.stdout.readline().strip() != "ready":
            raise RuntimeError("the direct engine process failed to start")
        out: dict[str, list[float]] = {"e2e": [], "in_worker": [], "direct": [], "queued": []}
        with self._client() as client:
            for i, prompt in enumerate(prompts):
                direct.stdin.write(f"{i}\n")
                direct.stdin.flush()
                out["direct"].append(float(direct.stdout.readline()))
                time.sleep(gap / 2)
                # stamped submitted_at now; --new-tokens, as the engine alone was given
                job = self._jobs([prompt], limits=[self.args.new_tokens])[0]
                t0 = time.time()
                client.submit_many([job])
                client.wait([job.job_id], timeout=600, poll_s=0.005)
                out["e2e"].append(time.time() - t0)
                doc = client.result(job.job_id)
                assert doc is not None and doc.status == "succeeded", doc
                out["in_worker"].append(doc.timings["compute_s"])  # the engine call, in the worker
                out["queued"].append(doc.timings["queue_wait_s"])  # submit to the engine call
                time.sleep(gap / 2)
        direct.stdin.close()
        direct.wait(60)
        return out

    def start_naive(self) -> None:
        redis = self.settings.redis_url_with_password().replace("/0", "/1")
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
        limits = token_limits(self.args, len(prompts))
        results = [
            self.celery.send_task(NAIVE_TASK, args=[p, n], queue="naive")
            for p, n in zip(prompts, limits, strict=True)
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
        shutil.rmtree(self.tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"])
    ap.add_argument("--model-dir", default=None, help="an LLM folder (default: the demo model)")
    ap.add_argument("--contenders", default="direct,blaze,naive,ray")
    ap.add_argument("--blaze-workers", type=int, default=2, help="worker processes (2 cores)")
    ap.add_argument("--max-wait", type=float, default=0.05, help="batch window, seconds")
    ap.add_argument(
        "--batches-in-hand",
        type=int,
        default=2,
        help="batches each Blaze worker holds (the worker's default, 2; 1: one at a time)",
    )
    ap.add_argument(
        "--latency-jobs", type=int, default=12, help="jobs of the latency mode (0: skip it)"
    )
    ap.add_argument("--latency-gap", type=float, default=1.0)
    ap.add_argument(
        "--workload",
        choices=["uniform", "mixed"],
        default="uniform",
        help="uniform: --new-tokens for every job; mixed: max_new_tokens drawn from 8 to "
        "--mixed-max by a fixed seed, and Blaze also runs with continuous generation",
    )
    ap.add_argument("--mixed-max", type=int, default=256)
    # child-process options
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    ap.add_argument("--part", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--parts", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--redis", default="", help=argparse.SUPPRESS)
    ap.add_argument("--queue", default="naive", help=argparse.SUPPRESS)
    args = ap.parse_args()
    for name in ("prompts", "batch", "new_tokens", "reps", "blaze_workers", "batches_in_hand"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.mixed_max < 8:
        ap.error("--mixed-max must be >= 8")
    if args.latency_jobs < 0:
        ap.error("--latency-jobs must be >= 0 (0 skips the latency mode)")
    args.continuous = args.workload == "mixed"
    if args.child:
        children = {
            "direct": child_direct,
            "serve": child_serve,
            "ray": child_ray,
            "naive-worker": child_naive_worker,
        }
        children[args.child](args)
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
    # SIGTERM unwinds like Ctrl-C, so the private stack and every worker are stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(f"compare: signal {signum}"))
    with Pipeline(args) as pipe:
        if "naive" in wanted:
            pipe.start_naive()
        for rep in range(args.reps):
            for name, layout in round_order(wanted, rep):
                key = f"{name} {layout}".strip()
                if name == "blaze" and args.continuous:
                    got = pipe.blaze(prompts, pipe.cb_model)
                    runs.setdefault("continuous", []).append(got)
                    print(
                        f"[round {rep + 1}] blaze continuous: "
                        f"{got['jobs'] / got['seconds']:.2f} jobs/s",
                        file=sys.stderr,
                        flush=True,
                    )
                if name == "blaze":
                    got = pipe.blaze(prompts)
                elif name == "naive":
                    got = pipe.run_naive(prompts)
                elif name == "direct":
                    got = run_direct(args, layout)
                else:
                    got = run_ray(args, layout)
                    warm = {"seconds": got["warm_seconds"], "latencies": got["warm_latencies"]}
                    runs.setdefault(f"{key} warm", []).append({**got, **warm})
                runs.setdefault(key, []).append(got)
                print(
                    f"[round {rep + 1}] {key}: {got['jobs'] / got['seconds']:.2f} jobs/s",
                    file=sys.stderr,
                    flush=True,
                )
        # latency mode: the same prompts one at a time through Blaze, and alone on the engine
        latency = (
            pipe.latency(prompts[: args.latency_jobs], args.latency_gap)
            if args.latency_jobs
            else {}
        )
    report(args, runs, latency)


def round_order(wanted: list[str], rep: int) -> list[tuple[str, str]]:
    """The runs of round ``rep`` (from 0) as (contender, layout): in the order asked, reversed
    in every other round so that drift within a round does not always hit the same one."""
    runs = [
        (name, layout)
        for name in wanted
        for layout in (["1x2", "2x1"] if name in ("direct", "ray") else [""])
    ]
    return runs if rep % 2 == 0 else runs[::-1]


def report(
    args: argparse.Namespace,
    runs: dict[str, list[dict[str, Any]]],
    latency: dict[str, list[float]],
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
        f"{'contender':<15}{'jobs/s':>9}{'tokens/s':>10}{'p50 s':>8}{'p95 s':>8}{'RSS MB':>9}"
        f"   (median of {args.reps}, {args.prompts} prompts, batch {args.batch}, "
        f"{args.workload} workload)"
    )
    for key, r in rows.items():
        print(
            f"{key:<15}{r['jobs_per_s']:>9.2f}{r['tokens_per_s']:>10.1f}{r['p50_s']:>8.2f}"
            f"{r['p95_s']:>8.2f}{r['rss_mb']:>9.0f}"
        )

    def per_round(name: str, warm: bool = False) -> list[float]:
        """The contender's best layout in each round (jobs/s)."""
        keys = [k for k in runs if k.split()[0] == name and k.endswith(" warm") == warm]
        if not keys:
            return []
        return [
            max(runs[k][r]["jobs"] / runs[k][r]["seconds"] for k in keys)
            for r in range(len(runs[keys[0]]))
        ]

    # Ratios are taken round by round (contenders of one round ran minutes apart) and the
    # median of those is reported, so a slow spell of the machine hits both sides of a ratio.
    blaze = per_round("blaze")
    ratios: dict[str, float | None] = {}
    rounds: dict[str, list[float]] = {}
    for name, warm in (("direct", False), ("naive", False), ("ray", False), ("ray", True)):
        other = per_round(name, warm)
        key = f"blaze_over_{name}" + ("_warm" if warm else "")
        if not other:
            ratios[key] = None
            continue
        per = [b / o for b, o in zip(blaze, other, strict=True)]
        ratios[key] = round(statistics.median(per), 3)
        rounds[key] = [round(r, 3) for r in per]
    cont = per_round("continuous")
    if cont:
        for name, key in (("blaze", "static"), ("ray", "ray"), ("direct", "direct")):
            other = per_round(name)
            if not other:
                ratios[f"mixed_over_{key}"] = None
                continue
            per = [c / o for c, o in zip(cont, other, strict=True)]
            ratios[f"mixed_over_{key}"] = round(statistics.median(per), 3)
            rounds[f"mixed_over_{key}"] = [round(r, 3) for r in per]
    if not latency:  # --latency-jobs 0
        print(json.dumps({**ratios, "ratios_per_round": rounds, "table": table(rows)}))
        return
    # What the pipeline adds to a lone job: end to end minus the engine call inside the worker,
    # and minus the same call made alone in a separate process just before (which also holds
    # the machine's call-to-call noise).
    e2e, in_worker, direct = latency["e2e"], latency["in_worker"], latency["direct"]
    added = [a - b for a, b in zip(e2e, in_worker, strict=True)]
    over_direct = [a - b for a, b in zip(e2e, direct, strict=True)]
    ms = {
        "added_latency_p50_ms": pct(added, 0.5) * 1000,
        "added_latency_p95_ms": pct(added, 0.95) * 1000,
        "added_over_direct_process_p50_ms": pct(over_direct, 0.5) * 1000,
        "added_over_direct_process_p95_ms": pct(over_direct, 0.95) * 1000,
        "queued_p50_ms": pct(latency["queued"], 0.5) * 1000,
        "max_wait_ms": args.max_wait * 1000,
    }
    print(
        f"\nlatency mode ({len(added)} jobs, one every {args.latency_gap}s, max wait "
        f"{ms['max_wait_ms']:.0f} ms): engine call p50 {pct(direct, 0.5):.3f} s alone, "
        f"{pct(in_worker, 0.5):.3f} s in the worker; through Blaze p50 {pct(e2e, 0.5):.3f} s.\n"
        f"added over the call in the worker: p50 {ms['added_latency_p50_ms']:.0f} ms, p95 "
        f"{ms['added_latency_p95_ms']:.0f} ms (submit to engine call p50 "
        f"{ms['queued_p50_ms']:.0f} ms); over the call alone in another process: p50 "
        f"{ms['added_over_direct_process_p50_ms']:.0f} ms, p95 "
        f"{ms['added_over_direct_process_p95_ms']:.0f} ms"
    )
    print(
        json.dumps(
            {
                **ratios,
                **{k: round(v, 1) for k, v in ms.items()},
                "ratios_per_round": rounds,
                "table": table(rows),
            }
        )
    )


if __name__ == "__main__":
    main()
