"""A no-op engine that answers every job with its own prompt: for plumbing tests and benchmarks.

Register a model with ``engine: echo`` to measure the pipeline without model compute.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engines.base import Output
from pipelines.jobs import LLMJob


class EchoEngine:
    """Returns each job's prompt (or last chat message) as its text."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.device = "cpu"

    def load(self, device: str) -> None:
        self.device = device

    def run(self, batch: Sequence[LLMJob]) -> list[Output]:
        outs = []
        for job in batch:
            text = job.prompt if job.prompt is not None else (job.messages or [])[-1].content
            outs.append(Output(text=text, finish_reason="stop", prompt_tokens=len(text.split())))
        return outs

    def describe(self) -> dict[str, Any]:
        return {"model": self.name, "engine": "echo", "weights": "none", "device": self.device}
