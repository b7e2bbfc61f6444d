"""Engines that misbehave on purpose, loaded by workers through ``engine: module:callable``.

``poison`` answers like echo but kills its process (``os._exit``) on the prompt ``POISON``,
as a segfaulting kernel or an OOM kill would. ``faulty`` fails every batch while the file
named by its ``source`` exists (a sick device), and answers like echo once it is removed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engines.base import Output
from engines.echo import EchoEngine
from pipelines.jobs import LLMJob
from pipelines.registry import ModelSpec
from pipelines.settings import BlazeSettings

MARKER = "POISON"


class Poison(EchoEngine):
    def run(self, batch: Sequence[LLMJob]) -> list[Output]:
        if any(j.prompt == MARKER for j in batch):
            os._exit(17)
        return super().run(batch)


class Faulty(EchoEngine):
    def __init__(self, name: str, broken_while: Path) -> None:
        super().__init__(name)
        self.broken_while = broken_while

    def run(self, batch: Sequence[LLMJob]) -> list[Output]:
        if self.broken_while.exists():
            raise RuntimeError("engine fault: the device stopped answering")
        return super().run(batch)


def poison(settings: BlazeSettings, spec: ModelSpec) -> Any:
    return Poison(spec.name)


def faulty(settings: BlazeSettings, spec: ModelSpec) -> Any:
    return Faulty(spec.name, Path(spec.source or "/nonexistent"))


class Slow(EchoEngine):
    """Echo that takes ``SLOW_S`` per job, so that batches are in flight when a kill lands."""

    def run(self, batch: Sequence[LLMJob]) -> list[Output]:
        time.sleep(SLOW_S * len(batch))
        return super().run(batch)


SLOW_S = 0.03


def slow(settings: BlazeSettings, spec: ModelSpec) -> Any:
    return Slow(spec.name)


class Lost(EchoEngine):
    """A device that fails while the file named by ``source`` exists, and then cannot load
    the model again in the same process."""

    loads = 0

    def __init__(self, name: str, broken_while: Path) -> None:
        super().__init__(name)
        self.broken_while = broken_while

    def load(self, device: str) -> None:
        Lost.loads += 1
        if Lost.loads > 1 and self.broken_while.exists():
            raise RuntimeError("no CUDA-capable device is detected")
        super().load(device)

    def run(self, batch: Sequence[LLMJob]) -> list[Output]:
        if self.broken_while.exists():
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return super().run(batch)


def lost(settings: BlazeSettings, spec: ModelSpec) -> Any:
    return Lost(spec.name, Path(spec.source or "/nonexistent"))


class Sleepy(EchoEngine):
    """Echo that sleeps the seconds a prompt ``sleep:S`` names, per job."""

    def run(self, batch: Sequence[LLMJob]) -> list[Output]:
        time.sleep(sum(float((j.prompt or "").partition("sleep:")[2] or 0) for j in batch))
        return super().run(batch)


def sleepy(settings: BlazeSettings, spec: ModelSpec) -> Any:
    return Sleepy(spec.name)
