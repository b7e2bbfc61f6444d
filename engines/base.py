"""The engine contract: load once on a device, run a whole batch, one output per job in order.

Also the helpers every engine shares (dtype names, weights digest, memory size); importing
this module does not import torch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from pipelines.errors import ModelUnavailable
from pipelines.jobs import AnyJob

if TYPE_CHECKING:
    import torch

J_contra = TypeVar("J_contra", bound=AnyJob, contravariant=True)


@dataclass(frozen=True)
class Output:
    """What an engine produced for one job; ``error`` set means this job failed alone."""

    text: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    error_kind: str | None = None  # engines.recovery.ErrorKind of ``error``
    images: list[bytes] = field(default_factory=list)  # PNG bytes, for image engines
    vectors: list[list[float]] = field(default_factory=list)  # for embedding engines
    info: dict[str, Any] = field(default_factory=dict)


class Engine(Protocol[J_contra]):
    """Runs batches of jobs of one model on one device.

    An engine whose ``concurrent`` attribute is true may be called from several threads at
    once (a worker holding several batches); any other is called one batch at a time.
    """

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


DTYPE_NAMES = ("auto", "bfloat16", "float16", "float32")
_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}  # x86 (AVX-512, AMX) and Arm (FEAT_BF16)


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bfloat16 natively (``/proc/cpuinfo`` flags); without it torch
    converts every bfloat16 matmul and float32 is faster (3.2x on an AVX2-only EPYC)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            return bool(_BF16_FLAGS & set(line.partition(":")[2].split()))
    return False


def resolve_dtype(name: str, device: str) -> str:
    """``auto``: bfloat16 where the device computes it natively (a CUDA GPU that supports it, a
    CPU with bf16 instructions), else float16 on older GPUs and float32 on CPUs; any other
    name as it is."""
    if name != "auto":
        return name
    if device.startswith("cuda"):
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "bfloat16" if cpu_has_bf16() else "float32"


def torch_dtype(name: str, model: str = "") -> torch.dtype:
    """The torch dtype a registry entry names (resolve ``auto`` first, ``resolve_dtype``);
    ``ModelUnavailable`` for any other name."""
    import torch

    if name not in DTYPE_NAMES or name == "auto":
        named = [n for n in DTYPE_NAMES if n != "auto"]
        raise ModelUnavailable(f"model {model}: dtype {name!r} is not one of {named}")
    dtype: torch.dtype = getattr(torch, name)
    return dtype


def weights_digest(path: Path) -> str:
    """A short content hash of the weight files, recorded as provenance."""
    h = hashlib.sha256()
    for f in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        stat = f.stat()
        h.update(f"{f.name}:{stat.st_size}".encode())
        with f.open("rb") as fh:
            h.update(fh.read(1 << 20))  # first MiB: cheap and distinguishes real weights
    return h.hexdigest()[:16]


def parameter_bytes(*modules: Any) -> int:
    """Bytes held by the parameters of torch modules (for memory budgets)."""
    return int(sum(p.numel() * p.element_size() for m in modules for p in m.parameters()))


def memory_bytes(engine: Engine[Any]) -> int:
    """What a loaded engine holds, for engines that can say (``memory_bytes()``); else 0."""
    size = getattr(engine, "memory_bytes", None)
    return int(size()) if callable(size) else 0
