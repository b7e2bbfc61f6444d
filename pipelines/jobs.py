"""Job schemas: what producers publish to Kafka, validated where it enters the system.

Wire format: one JSON object per Kafka message on ``{namespace}.jobs.{kind}``, key = job id.
Bounds keep one job from taking a worker down; ``job_id`` is restricted so it can never escape
its S3 prefix.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeGuard

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from pipelines.errors import InvalidJob
from pipelines.stores.deadletters import DeadLetter, Source

JOB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*$"
JobId = Annotated[
    str,
    StringConstraints(pattern=JOB_ID_PATTERN, min_length=1, max_length=128),
]
ModelName = Annotated[
    str,
    StringConstraints(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*(@[A-Za-z0-9][A-Za-z0-9_-]*)?$",
        min_length=1,
        max_length=141,
    ),
]
"""A model (its ``stable`` version), ``model@alias`` or ``model@N`` (``pipelines.versions``)."""
MAX_PROMPT_CHARS = 32_000
MAX_IMAGE_PROMPT_CHARS = 2_000
MAX_EMBED_CHARS = 8_000
MAX_PIXELS_PER_JOB = 8 * 1024 * 1024
PAYLOAD_KEEP_BYTES = 4096
GROUP_TAG = "batch_id"
"""The tag that makes a job part of a group (an OpenAI-style batch) whose completion is tracked."""


_JOB_ID_RE = re.compile(JOB_ID_PATTERN)


def is_job_id(value: object) -> TypeGuard[str]:
    """Whether ``value`` is a valid job id (the ``JobId`` rule, for ids found in raw data)."""
    return isinstance(value, str) and len(value) <= 128 and bool(_JOB_ID_RE.match(value))


def job_seed(job_id: str) -> int:
    """The seed of a job submitted without one: derived from its id, so a rerun of the job
    (redelivery) reproduces its result; leaves room for ``seed + k`` per image."""
    digest = hashlib.sha256(job_id.encode()).digest()
    return int.from_bytes(digest[:4], "big") % (2**32 - 1024)


def new_job_id() -> str:
    """A random job id that sorts roughly by creation time."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:16]}"


def _now() -> datetime:
    return datetime.now(UTC)


Tags = Annotated[
    dict[
        Annotated[str, StringConstraints(max_length=64)],
        Annotated[str, StringConstraints(max_length=256)],
    ],
    Field(max_length=16),
]


class ChatMessage(BaseModel):
    """One turn of a chat conversation."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: Annotated[str, StringConstraints(max_length=MAX_PROMPT_CHARS)]


class _JobBase(BaseModel):
    """Fields every job kind has."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    job_id: JobId = Field(default_factory=new_job_id)
    model: ModelName
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)
    priority: int = Field(default=5, ge=0, le=9)
    deadline: datetime | None = None
    tags: Tags = {}
    submitted_at: datetime = Field(default_factory=_now)
    cache: bool = Field(
        default=True, description="false: always compute, never answer from the result cache"
    )


class LLMJob(_JobBase):
    """A text-generation job: either a raw ``prompt`` or chat ``messages``."""

    kind: Literal["llm"] = "llm"
    prompt: Annotated[str, StringConstraints(min_length=1, max_length=MAX_PROMPT_CHARS)] | None = (
        None
    )
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=64)] | None = None
    max_new_tokens: int = Field(default=64, ge=1, le=4096)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: Annotated[
        list[Annotated[str, StringConstraints(min_length=1, max_length=64)]], Field(max_length=4)
    ] = []

    @model_validator(mode="after")
    def _one_input(self) -> LLMJob:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' or 'messages'")
        return self


class DiffusionJob(_JobBase):
    """A text-to-image job; ``num_images`` images from one prompt, PNG outputs."""

    kind: Literal["diffusion"] = "diffusion"
    prompt: Annotated[str, StringConstraints(min_length=1, max_length=MAX_IMAGE_PROMPT_CHARS)]
    negative_prompt: Annotated[str, StringConstraints(max_length=MAX_IMAGE_PROMPT_CHARS)] | None = (
        None
    )
    width: int = Field(default=512, ge=64, le=2048, multiple_of=8)
    height: int = Field(default=512, ge=64, le=2048, multiple_of=8)
    num_inference_steps: int = Field(default=30, ge=1, le=200)
    guidance_scale: float = Field(default=7.5, ge=0.0, le=30.0)
    num_images: int = Field(default=1, ge=1, le=8)

    @model_validator(mode="after")
    def _pixels(self) -> DiffusionJob:
        if self.width * self.height * self.num_images > MAX_PIXELS_PER_JOB:
            raise ValueError(
                f"width*height*num_images = {self.width * self.height * self.num_images} "
                f"exceeds {MAX_PIXELS_PER_JOB} pixels per job"
            )
        return self


class EmbedJob(_JobBase):
    """Sentence embeddings for up to 256 texts; one vector per text, in order."""

    kind: Literal["embed"] = "embed"
    texts: Annotated[
        list[Annotated[str, StringConstraints(min_length=1, max_length=MAX_EMBED_CHARS)]],
        Field(min_length=1, max_length=256),
    ]
    normalize: bool = True


Job = Annotated[LLMJob | DiffusionJob | EmbedJob, Field(discriminator="kind")]
AnyJob = LLMJob | DiffusionJob | EmbedJob
JOB_MODELS: dict[str, type[LLMJob] | type[DiffusionJob] | type[EmbedJob]] = {
    "llm": LLMJob,
    "diffusion": DiffusionJob,
    "embed": EmbedJob,
}
JOB_KINDS = tuple(JOB_MODELS)


def job_group(job: AnyJob) -> str:
    """The group (OpenAI-style batch) a job belongs to, or ``""``."""
    return job.tags.get(GROUP_TAG, "")


SENT_WITH_HEADER = "blaze-sent-with"
"""Optional Kafka record header: how many jobs the producer published in the same call (an
ASCII integer). Until a batch holds that many of them (or is full), the consumer neither lets
it leave early when quiet nor at its first deadline (see ``consumers.batching``)."""


def batch_key(job: AnyJob) -> tuple[object, ...]:
    """Jobs with equal keys can share one engine call.

    LLM rows may differ in every generation parameter (the engine handles them per row);
    diffusion rows must share resolution, step count and guidance scale; embedding jobs of one
    model always mix.
    """
    if isinstance(job, DiffusionJob):
        return (
            job.kind,
            job.model,
            job.width,
            job.height,
            job.num_inference_steps,
            job.guidance_scale,
        )
    return (job.kind, job.model)


def _errors(exc: ValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": ".".join(str(p) for p in e["loc"]), "msg": e["msg"], "type": e["type"]}
        for e in exc.errors(include_input=False, include_url=False)
    ]


def _summary(errors: list[dict[str, Any]]) -> str:
    parts = [f"{e['loc']}: {e['msg']}" if e["loc"] else str(e["msg"]) for e in errors[:5]]
    more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


def parse_job(raw: bytes | None, kind: str, source: Source | None = None) -> AnyJob | DeadLetter:
    """Validate one Kafka message body as a job of ``kind``; anything else is a dead letter."""
    payload = (raw or b"")[:PAYLOAD_KEEP_BYTES].decode(errors="replace")
    try:
        data = json.loads(raw or b"")
    except (ValueError, UnicodeDecodeError) as exc:
        return DeadLetter("intake", f"invalid JSON: {exc}", source=source, payload=payload)
    job_id = data.get("job_id") if isinstance(data, dict) else None
    job_id = job_id if isinstance(job_id, str) and len(job_id) <= 128 else None
    if not isinstance(data, dict):
        reason = f"invalid job: expected a JSON object, got {type(data).__name__}"
        return DeadLetter("intake", reason, source=source, payload=payload)
    if data.get("kind", kind) != kind:
        reason = f"invalid job: kind {data.get('kind')!r} published to the {kind!r} topic"
        return DeadLetter("intake", reason, job_id=job_id, source=source, payload=payload)
    model = JOB_MODELS.get(kind)
    if model is None:
        return DeadLetter("intake", f"unknown job kind {kind!r}", job_id, source, payload=payload)
    try:
        job = model.model_validate(data)
    except ValidationError as exc:
        errors = _errors(exc)
        return DeadLetter(
            "intake", f"invalid job: {_summary(errors)}", job_id, source, errors, payload
        )
    return job


def validate_job(data: dict[str, Any], kind: str = "llm") -> AnyJob:
    """Validate a job built in Python (SDK, CLI); raises ``InvalidJob`` naming the fields."""
    model = JOB_MODELS.get(kind)
    if model is None:
        raise InvalidJob(f"unknown job kind {kind!r}; known: {sorted(JOB_MODELS)}")
    try:
        job = model.model_validate(data)
    except ValidationError as exc:
        errors = _errors(exc)
        raise InvalidJob(
            f"invalid {kind} job: {_summary(errors)}", job_id=data.get("job_id"), errors=errors
        ) from None
    return job
