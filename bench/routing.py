"""Routing strategies side by side: model loads and wall time over the same mixed workload.

Runs a private embedded stack, three workers on three device names of this CPU (``cpu:0``,
``cpu:1``, ``cpu:2``, one torch thread each) whose memory budget holds two of four tiny
models, and for each strategy a fresh namespace, fresh workers and one consumer routing with
it. The same jobs (the four models interleaved) go through every strategy; loads are read from
each worker's ``blaze_model_loads_total``. Prints a table, then as the last line one JSON
object: per strategy ``loads``, ``seconds`` and ``succeeded``, plus ``rr_over_affinity_loads``
and ``affinity_speedup_over_rr`` (round-robin seconds / model_affinity seconds).

    .venv/bin/python bench/routing.py                       # 2,000 jobs, all six strategies
    .venv/bin/python bench/routing.py --jobs 200 --strategies model_affinity,round_robin
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
import urllib.request
from pathlib import Path

from benchkit import stop, wait_for
from prometheus_client.parser import text_string_to_metric_families

from blaze.dev.tiny_models import make_tiny_llm
from infra.stack import Stack, free_stack_ports
from pipelines.client import Client
from pipelines.jobs import LLMJob
from pipelines.observe.heartbeats import HeartbeatStore
from pipelines.settings import BlazeSettings, RoutingStrategy

STRATEGIES = list(RoutingStrategy.__args__)  # type: ignore[attr-defined]
DEVICES = ["cpu:0", "cpu:1", "cpu:2"]


def model_loads(settings: BlazeSettings) -> int:
    """Sum of blaze_model_loads_total over the namespace's live workers."""
    total = 0.0
    store = HeartbeatStore(settings)
    try:
        for seen in store.seen("worker"):
            if seen.state != "alive" or not seen.beat.url:
                continue
            with urllib.request.urlopen(seen.beat.url + "/metrics", timeout=10) as resp:
                text = resp.read().decode()
            for family in text_string_to_metric_families(text):
                if family.name == "blaze_model_loads":
                    total += sum(s.value for s in family.samples if s.name.endswith("_total"))
    finally:
        store.close()
    return int(total)


def run_strategy(
    settings: BlazeSettings, logs: Path, strategy: str, prompts: list[tuple[str, str]]
) -> dict[str, object]:
    ns = "r" + strategy.replace("_", "")[:18]
    settings = settings.model_copy(update={"namespace": ns})
    env = {**os.environ, **settings.to_env()}
    env["BLAZE_WORKER__TORCH_THREADS"] = "1"
    cli = [sys.executable, "-m", "blaze"]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        starting = []
        for device in DEVICES:
            log = logs / f"{ns}-{device.replace(':', '')}.log"
            with log.open("wb") as fh:
                proc = subprocess.Popen(
                    [*cli, "worker", "--device", device, "--kind", "llm"],
                    env=env,
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                )
            procs.append(proc)
            starting.append((log, proc))
        for log, proc in starting:
            wait_for(log, " ready.", proc)
        clog = logs / f"{ns}-consumer.log"
        with clog.open("wb") as fh:
            consumer = subprocess.Popen(
                [*cli, "consume", "--strategy", strategy],
                env=env,
                stdout=fh,
                stderr=subprocess.STDOUT,
            )
        procs.append(consumer)
        wait_for(clog, "intake joined group", consumer)
        time.sleep(settings.observe.heartbeat_s * 1.5)  # every worker has beaten once
        with Client(settings) as client:
            jobs = [LLMJob(model=m, prompt=p, max_new_tokens=2) for m, p in prompts]
            t0 = time.perf_counter()
            client.submit_many(jobs)
            final = client.wait([j.job_id for j in jobs], timeout=1200, poll_s=0.1)
            seconds = time.perf_counter() - t0
        ok = sum(s.state.value == "succeeded" for s in final.values())
        return {"loads": model_loads(settings), "seconds": round(seconds, 2), "succeeded": ok}
    finally:
        stop(procs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated")
    ap.add_argument("--batch", type=int, default=16, help="max batch size of every model")
    args = ap.parse_args()
    if args.jobs < 1:
        ap.error("--jobs must be >= 1")
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown or not strategies:
        ap.error(f"--strategies: unknown {unknown}; choose from {', '.join(STRATEGIES)}")

    tmp = Path(tempfile.mkdtemp(prefix="blaze-bench-routing-"))
    models = tmp / "models"
    names = [f"m{i}" for i in range(4)]
    for i, name in enumerate(names):
        make_tiny_llm(models / name, seed=i, hidden_size=128)  # about 1.4 MB each
    registry = {
        "models": {
            n: {
                "dtype": "float32",
                "devices": DEVICES,
                "max_batch_size": args.batch,
                "max_wait_s": 0.2,
            }
            for n in names
        }
    }
    settings = BlazeSettings(
        models_dir=models,
        registry_file=tmp / "models.yaml",
        stack={"state_dir": tmp / "stack", **free_stack_ports()},
        worker={"memory_budget_mb": 3},  # two of the four models fit
        observe={"run_dir": tmp / "run"},
    )
    settings.registry_file.write_text(json.dumps(registry))
    prompts = [(names[i % 4], f"job {i} of the mixed workload") for i in range(args.jobs)]
    stack = Stack(settings)
    results: dict[str, dict[str, object]] = {}
    try:
        stack.up()
        settings = stack.settings
        logs = tmp / "logs"
        logs.mkdir()
        for strategy in strategies:
            results[strategy] = got = run_strategy(settings, logs, strategy, prompts)
            print(f"{strategy:<18} {got['loads']:>6} loads {got['seconds']:>8} s", flush=True)
    finally:
        stack.down()
        shutil.rmtree(tmp, ignore_errors=True)
    out: dict[str, object] = {"jobs": args.jobs, **results}
    aff, rr = results.get("model_affinity"), results.get("round_robin")
    if aff and rr:
        out["rr_over_affinity_loads"] = round(int(rr["loads"]) / max(1, int(aff["loads"])), 2)  # type: ignore[call-overload]
        out["affinity_speedup_over_rr"] = round(float(rr["seconds"]) / float(aff["seconds"]), 3)  # type: ignore[arg-type]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
