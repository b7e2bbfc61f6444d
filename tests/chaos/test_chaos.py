"""Chaos on the real embedded stack: nothing is lost, nothing ends twice.

Jobs stream through two consumers and three workers (``cpu:0``-``cpu:2``) on a private stack
while a random worker or consumer is killed with SIGKILL every few seconds (a supervisor
restarts it, as systemd or Kubernetes would) and Redis, SeaweedFS and the broker are each
restarted once. Afterwards every job is terminal, every succeeded job's result is its own
answer, and no job shows two different outcomes on the status topic.

CI runs a short version; the full one (2,000 jobs, at least 20 kills)::

    BLAZE_CHAOS=full .venv/bin/pytest tests/chaos -s
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.stack import Stack, free_stack_ports
from pipelines.client import Client
from pipelines.errors import ServiceUnavailable
from pipelines.jobs import LLMJob
from pipelines.settings import BlazeSettings
from pipelines.stores.events_kafka import KafkaStatusEvents
from pipelines.stores.status import JobState
from tests.conftest import settings_env

pytestmark = pytest.mark.integration

FULL = os.environ.get("BLAZE_CHAOS") == "full"
JOBS = 2000 if FULL else 240
KILLS = 24 if FULL else 6
KILL_EVERY_S = 2.5
CHUNK = 40 if FULL else 20  # jobs submitted per second while the chaos runs


class Fleet:
    """Consumers and workers as processes, restarted whenever they exit."""

    def __init__(self, settings: BlazeSettings, logs: Path) -> None:
        self.env = settings_env(settings)
        self.logs = logs
        cli = [sys.executable, "-m", "blaze"]
        self.commands = {
            **{f"consumer{i}": [*cli, "consume"] for i in range(2)},
            **{
                f"worker{i}": [*cli, "worker", "--device", f"cpu:{i}", "--kind", "llm"]
                for i in range(3)
            },
        }
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.restarts: dict[str, int] = dict.fromkeys(self.commands, 0)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def start(self, name: str) -> None:
        with (self.logs / f"{name}.log").open("ab") as fh:
            self.procs[name] = subprocess.Popen(
                self.commands[name], env=self.env, stdout=fh, stderr=subprocess.STDOUT
            )

    def _watch(self) -> None:
        while not self.stop.wait(0.2):
            with self.lock:
                for name, proc in list(self.procs.items()):
                    if proc.poll() is not None:
                        self.restarts[name] += 1
                        self.start(name)

    def kill(self, name: str) -> None:
        with self.lock:
            proc = self.procs[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()

    def __enter__(self) -> Fleet:
        for name in self.commands:
            self.start(name)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def log_text(self, needle: str) -> int:
        return sum(p.read_text(errors="replace").count(needle) for p in self.logs.glob("*.log"))


@pytest.fixture
def chaos_stack(tmp_path: Path) -> Iterator[tuple[Stack, BlazeSettings]]:
    settings = BlazeSettings(
        namespace="chaos",
        registry_file=tmp_path / "models.yaml",
        models_dir=tmp_path / "models",
        stack={"state_dir": tmp_path / "stack", **free_stack_ports()},
        batch={"max_size": 16, "max_wait_s": 0.2},
        observe={"run_dir": tmp_path / "run"},
    )
    settings.registry_file.write_text(
        json.dumps(
            {
                "models": {
                    "slow": {
                        "engine": "tests.integration.fleet_engines:slow",
                        "devices": ["cpu:0", "cpu:1", "cpu:2"],
                    }
                }
            }
        )
    )
    stack = Stack(settings)
    stack.up()
    try:
        yield stack, stack.settings
    finally:
        stack.down()


def submit_through_outages(client: Client, jobs: list[LLMJob]) -> None:
    """What a producer does: try again until the broker and Redis take the chunk."""
    deadline = time.monotonic() + 120
    while True:
        try:
            client.submit_many(jobs)
            return
        except ServiceUnavailable:
            assert time.monotonic() < deadline, "services never came back"
            time.sleep(0.5)


@pytest.mark.timeout(1800 if FULL else 420)
def test_nothing_is_lost_under_kills_and_service_restarts(
    chaos_stack: tuple[Stack, BlazeSettings], tmp_path: Path
) -> None:
    stack, settings = chaos_stack
    logs = tmp_path / "logs"
    logs.mkdir()
    rng = random.Random(int(os.environ.get("BLAZE_CHAOS_SEED", "16")))
    jobs = [LLMJob(model="slow", prompt=f"job {i}") for i in range(JOBS)]
    ids = [j.job_id for j in jobs]
    restarts = ["redis", "s3", "kafka"]
    kills: list[str] = []
    t0 = time.monotonic()
    with Fleet(settings, logs) as fleet, Client(settings) as client:
        time.sleep(8)  # workers import torch; consumers join the group
        sent = 0
        next_kill = time.monotonic() + KILL_EVERY_S
        while sent < JOBS or len(kills) < KILLS:
            if sent < JOBS:
                submit_through_outages(client, jobs[sent : sent + CHUNK])
                sent += CHUNK
            if time.monotonic() >= next_kill and len(kills) < KILLS:
                victim = rng.choice(sorted(fleet.commands))
                fleet.kill(victim)
                kills.append(victim)
                next_kill = time.monotonic() + KILL_EVERY_S
                # one restart of each service, spread over the run
                if restarts and len(kills) % max(1, KILLS // 4) == 0:
                    stack.restart(restarts.pop(0))
            time.sleep(1.0)
        while restarts:
            stack.restart(restarts.pop(0))
        chaos_s = time.monotonic() - t0
        drain_from = time.monotonic()
        final = client.wait(ids, timeout=600 if FULL else 240, poll_s=0.5)
        drain_s = time.monotonic() - drain_from
        results = {jid: client.result(jid) for jid in ids}
        reaped = fleet.log_text("died: ")
        restarted = dict(fleet.restarts)
    states = {jid: (st.state if st else None) for jid, st in final.items()}
    counts: dict[str, int] = {}
    for s in states.values():
        counts[str(s)] = counts.get(str(s), 0) + 1
    redelivered = sum(1 for st in final.values() if st is not None and st.attempts > 1)
    print(
        f"\n[chaos] {len(jobs)} jobs, {len(kills)} kill -9s "
        f"({sum(k.startswith('worker') for k in kills)} workers, "
        f"{sum(k.startswith('consumer') for k in kills)} consumers), redis/s3/kafka restarted "
        f"once; {redelivered} jobs ran more than once, {reaped} dead workers' batches sent "
        f"back; chaos {chaos_s:.0f} s, drained {drain_s:.1f} s after; states {counts}; "
        f"process restarts {restarted}"
    )
    assert len(kills) >= KILLS
    assert all(s is not None and s.terminal for s in states.values()), counts
    by_prompt = {j.job_id: j.prompt for j in jobs}
    for jid, st in states.items():
        if st is JobState.SUCCEEDED:
            doc = results[jid]
            assert doc is not None and doc.status == "succeeded", jid
            assert getattr(doc, "text", None) == by_prompt[jid], (jid, doc)
    outcomes: dict[str, set[str]] = {}
    for ev in KafkaStatusEvents(settings).read(idle_s=3):
        if ev.state.terminal:
            outcomes.setdefault(ev.job_id, set()).add(ev.state.value)
    twice = {jid: o for jid, o in outcomes.items() if len(o) > 1}
    assert not twice, twice
