"""An engine with a known cost, for batching benchmarks: ``engine: blaze.dev.timed_engine:make``.

A call of ``b`` jobs sleeps ``fixed + per_job * b`` seconds (``BLAZE_DEV_TIMED_FIXED_S``,
default 0.1, and ``BLAZE_DEV_TIMED_PER_JOB_S``, default 0.01, in the worker's environment),
then answers like echo. Sleeping instead of computing keeps the benchmark's figures about the
batching policy, not about a 2-core machine's noise.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from engines.base import Output
from engines.echo import EchoEngine
from pipelines.jobs import LLMJob
from pipelines.registry import ModelSpec
from pipelines.settings import BlazeSettings


class TimedEngine(EchoEngine):
    def __init__(self, name: str, fixed_s: float, per_job_s: float) -> None:
        super().__init__(name)
        self.fixed_s, self.per_job_s = fixed_s, per_job_s

    def run(self, batch: Sequence[LLMJob]) -> list[Output]:
        time.sleep(self.fixed_s + self.per_job_s * len(batch))
        return super().run(batch)


def make(settings: BlazeSettings, spec: ModelSpec) -> TimedEngine:
    return TimedEngine(
        spec.name,
        float(os.environ.get("BLAZE_DEV_TIMED_FIXED_S", "0.1")),
        float(os.environ.get("BLAZE_DEV_TIMED_PER_JOB_S", "0.01")),
    )
