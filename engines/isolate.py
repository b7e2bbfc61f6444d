"""Running a batch so that one bad job or an out-of-memory error cannot take the rest down."""

from __future__ import annotations

import gc
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any, Literal

from engines.base import Engine, Output
from pipelines.jobs import AnyJob

log = logging.getLogger(__name__)


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA/CPU out-of-memory errors, whichever way the framework raised them."""
    if isinstance(exc, MemoryError):
        return True
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


ErrorKind = Literal["input", "oom", "device", "other"]
_DEVICE_MARKERS = (
    "cuda error",
    "device-side assert",
    "cudnn",
    "nccl",
    "hip error",
    "non-finite",
    "contains either `inf`",  # sampling from NaN logits
)


def error_kind(exc: BaseException) -> ErrorKind:
    """Whose fault an engine error is: ``input`` (the job's own: it fails at once, e.g. a
    prompt that does not fit the context), ``oom`` and ``device`` (the device's: retried, and a
    device error reloads the engine), ``other`` (unknown: retried)."""
    if is_out_of_memory(exc):
        return "oom"
    text = f"{type(exc).__name__}: {exc}".lower()
    if type(exc).__name__ == "AcceleratorError" or any(m in text for m in _DEVICE_MARKERS):
        return "device"
    if isinstance(exc, ValueError | TypeError | KeyError | IndexError | UnicodeError):
        return "input"
    return "other"


def run_isolated(
    engine: Engine[Any], jobs: Sequence[AnyJob], free: Callable[[], None] = lambda: None
) -> list[Output]:
    """Run a batch; if the call fails, split it in halves and retry each, recursively.

    An out-of-memory error shrinks the batch until it fits; any other error narrows down to
    the job(s) that cause it, which fail alone with the reason while the rest succeed.
    """
    try:
        outs = engine.run(jobs)
        if len(outs) != len(jobs):
            raise RuntimeError(f"engine returned {len(outs)} outputs for {len(jobs)} jobs")
        return outs
    except Exception as exc:
        oom = is_out_of_memory(exc)
        if oom:
            free()
        if len(jobs) == 1:
            why = "out of memory even alone" if oom else f"{type(exc).__name__}: {exc}"
            log.warning("job %s failed on its own: %s", jobs[0].job_id, why)
            return [Output(error=why[:1000], error_kind=error_kind(exc))]
        mid = len(jobs) // 2
        log.warning(
            "batch of %d failed (%s: %s); retrying as %d + %d",
            len(jobs),
            type(exc).__name__,
            str(exc)[:200],
            mid,
            len(jobs) - mid,
        )
        return run_isolated(engine, jobs[:mid], free) + run_isolated(engine, jobs[mid:], free)


def free_accelerator_memory() -> None:
    """Release cached allocator blocks after an out-of-memory error."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
