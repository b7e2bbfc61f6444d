"""The result document of a job, stored at ``{namespace}/jobs/{job_id}/result.json``."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Usage(BaseModel):
    """Token counts of one generation."""

    model_config = ConfigDict(frozen=True)
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _ResultBase(BaseModel):
    """Fields every result has: whose, how it ended, with what and when."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    job_id: str
    status: Literal["succeeded", "failed", "cancelled"]
    model: str
    error: str | None = None
    provenance: dict[str, Any] = Field(default_factory=dict)
    timings: dict[str, float] = Field(default_factory=dict)
    tags: dict[str, str] = Field(default_factory=dict)
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    cached: bool = False
    """Answered from the result cache: ``provenance.cached_from`` names the job that ran."""

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()


class LLMResult(_ResultBase):
    """Outcome of one LLM job; ``status`` says whether ``text`` or ``error`` is set."""

    kind: Literal["llm"] = "llm"
    text: str | None = None
    finish_reason: Literal["stop", "length"] | None = None
    usage: Usage = Usage()


class ImageRef(BaseModel):
    """One image of a diffusion result: where its PNG is and how it was made."""

    model_config = ConfigDict(frozen=True)
    key: str
    seed: int | None = None
    width: int
    height: int
    bytes: int


class DiffusionResult(_ResultBase):
    """Outcome of one diffusion job; the PNGs sit beside ``result.json`` under the job prefix."""

    kind: Literal["diffusion"] = "diffusion"
    images: list[ImageRef] = Field(default_factory=list)


class EmbedResult(_ResultBase):
    """Outcome of one embedding job: one vector per input text, in order."""

    kind: Literal["embed"] = "embed"
    vectors: list[list[float]] = Field(default_factory=list)
    dim: int = 0
    usage: Usage = Usage()


AnyResult = LLMResult | DiffusionResult | EmbedResult
RESULT_TYPES: dict[str, type[AnyResult]] = {
    "llm": LLMResult,
    "diffusion": DiffusionResult,
    "embed": EmbedResult,
}


def parse_result(raw: bytes) -> AnyResult:
    """A result document of any kind."""
    kind = json.loads(raw).get("kind", "llm")
    return RESULT_TYPES.get(kind, LLMResult).model_validate_json(raw)
