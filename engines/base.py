"""The engine contract: load once on a device, run a whole batch, one output per job in order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from pipelines.jobs import AnyJob

J_contra = TypeVar("J_contra", bound=AnyJob, contravariant=True)


@dataclass(frozen=True)
class Output:
    """What an engine produced for one job; ``error`` set means this job failed alone."""

    text: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    images: list[bytes] = field(default_factory=list)  # PNG bytes, for image engines
    vectors: list[list[float]] = field(default_factory=list)  # for embedding engines
    info: dict[str, Any] = field(default_factory=dict)


def parameter_bytes(*modules: Any) -> int:
    """Bytes held by the parameters of torch modules (for memory budgets)."""
    return int(sum(p.numel() * p.element_size() for m in modules for p in m.parameters()))


class Engine(Protocol[J_contra]):
    """Runs batches of jobs of one model on one device."""

    name: str

    def load(self, device: str) -> None:
        """Load weights onto ``device`` once; later batches reuse them."""
        ...

    def run(self, batch: Sequence[J_contra]) -> list[Output]:
        """Run the whole batch; returns one ``Output`` per job, in the same order."""
        ...

    def describe(self) -> dict[str, Any]:
        """Provenance of the loaded weights (path, revision or hash, dtype, device)."""
        ...
