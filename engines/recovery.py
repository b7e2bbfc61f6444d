"""Bounded retries and auto-recovery around one engine call.

A job that failed for its own reasons (``input``: e.g. a prompt that does not fit the context)
fails at once. A job that failed for the device's (out of memory even alone, a device error)
or for an unknown reason is rerun up to ``fleet.engine_retries`` times, ``retry_backoff_s``
doubling in between. After a device error the engine is unloaded and loaded again first; if
that load fails the device is lost (``DeviceLost``) and the worker stops serving.

While the engine runs the batch, ``running`` (the batch's in-engine mark, ``pipelines.fleet``)
is held: if the worker dies then, the reaper blames this batch's jobs and not the other
batches the worker held.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from engines.base import Engine, Output
from engines.cache import EngineCache
from engines.isolate import free_accelerator_memory, run_isolated
from pipelines.errors import ModelUnavailable
from pipelines.jobs import AnyJob

log = logging.getLogger(__name__)


class DeviceLost(Exception):
    """A device error that reloading the engine did not cure: the worker must stop."""


@dataclass(frozen=True)
class Attempted:
    """What the engine made of a batch after retries, and whether the device is to blame."""

    outputs: list[Output]
    engine: Engine[Any]
    retried: int  # job runs repeated after a transient error
    device_failed: bool  # every job failed, none for reasons of its own


def run_with_retries(
    cache: EngineCache,
    model: str,
    jobs: Sequence[AnyJob],
    *,
    retries: int,
    backoff_s: float,
    sleep: Callable[[float], None] = time.sleep,
    alone: bool = False,
    running: Callable[[], AbstractContextManager[object]] = nullcontext,
) -> Attempted:
    """Run ``jobs`` on ``model``'s engine, retrying transient failures (see the module);
    ``alone``: with no other engine call of the worker beside it (``EngineCache.turn``)."""
    engine = cache.get(model)  # ModelUnavailable: the caller fails the jobs with it
    outputs: list[Output] = [Output(error="not run")] * len(jobs)
    todo = list(range(len(jobs)))
    retried = 0
    for attempt in range(retries + 1):
        with cache.turn(model, engine, alone), running():
            outs = run_isolated(engine, [jobs[i] for i in todo], free_accelerator_memory)
        again: list[int] = []
        for i, out in zip(todo, outs, strict=True):
            outputs[i] = out
            if out.error and out.error_kind not in (None, "input"):
                again.append(i)
        if any(outputs[i].error_kind == "device" for i in again):
            log.warning("device error on %s: reloading its engine", model)
            try:
                engine = cache.reload(model)
            except ModelUnavailable as exc:
                raise DeviceLost(f"{model} on {cache.device}: reload failed: {exc}") from exc
        if not again or attempt == retries:
            break
        delay = backoff_s * 2**attempt
        log.warning(
            "%d of %d jobs of %s failed transiently; retry %d/%d in %.1fs",
            len(again),
            len(jobs),
            model,
            attempt + 1,
            retries,
            delay,
        )
        sleep(delay)
        retried += len(again)
        todo = again
    device_failed = bool(outputs) and all(
        o.error and o.error_kind not in (None, "input") for o in outputs
    )
    return Attempted(outputs, engine, retried, device_failed)
