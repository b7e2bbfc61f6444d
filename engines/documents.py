"""The result documents (and image blobs) of one engine call's outputs."""

from __future__ import annotations

from typing import Any

from engines.base import Output
from pipelines.jobs import AnyJob, DiffusionJob, EmbedJob
from pipelines.results import (
    AnyResult,
    DiffusionResult,
    EmbedResult,
    ImageRef,
    LLMResult,
    Usage,
)
from pipelines.settings import BlazeSettings


def result_docs(
    settings: BlazeSettings,
    model: str,
    jobs: list[AnyJob],
    outputs: list[Output],
    prov: dict[str, Any],
    timing: tuple[float, float, float],
    batch_size: int,
    hops: dict[str, str],
) -> tuple[list[AnyResult], list[tuple[str, bytes, str]]]:
    """One document per job; ``timing`` is (engine start, compute seconds, batch queued at).

    ``model`` is what ran (``name@N`` for a model with versions): the documents name the model
    as each job did and carry the version in ``provenance.model_version``."""
    t0, compute, queued_at = timing
    docs: list[AnyResult] = []
    blobs: list[tuple[str, bytes, str]] = []
    for job, out in zip(jobs, outputs, strict=True):
        common: dict[str, Any] = {
            "job_id": job.job_id,
            "status": "failed" if out.error else "succeeded",
            "model": job.model,
            "error": out.error,
            "tags": dict(job.tags),
            "timings": {
                "queue_wait_s": round(max(0.0, t0 - job.submitted_at.timestamp()), 4),
                "batch_wait_s": round(max(0.0, t0 - queued_at), 4),
                "compute_s": round(compute, 4),
            },
        }
        seed = out.info.get("seed")
        provenance = {
            **prov,
            **({"model_version": model} if "@" in model else {}),
            "batch_size": batch_size,
            "seed": job.seed if seed is None else seed,
        }
        if job.job_id in hops:
            provenance["traceparent"] = hops[job.job_id]
        if isinstance(job, EmbedJob):
            dim = len(out.vectors[0]) if out.vectors else 0
            provenance["params"] = {"normalize": job.normalize, "texts": len(job.texts)}
            docs.append(
                EmbedResult(
                    **common,
                    vectors=out.vectors,
                    dim=dim,
                    provenance=provenance,
                    usage=Usage(prompt_tokens=out.prompt_tokens),
                )
            )
            continue
        if isinstance(job, DiffusionJob):
            refs = []
            for k, png in enumerate(out.images):
                key = f"{settings.result_prefix(job.job_id)}image-{k}.png"
                blobs.append((key, png, "image/png"))
                seed = None if out.info.get("seed") is None else out.info["seed"] + k
                refs.append(
                    ImageRef(key=key, seed=seed, width=job.width, height=job.height, bytes=len(png))
                )
            provenance["params"] = job.model_dump(
                include={
                    "width",
                    "height",
                    "num_inference_steps",
                    "guidance_scale",
                    "num_images",
                    "negative_prompt",
                }
            )
            docs.append(DiffusionResult(**common, images=refs, provenance=provenance))
            continue
        provenance["params"] = {
            "max_new_tokens": job.max_new_tokens,
            "temperature": job.temperature,
            "top_p": job.top_p,
            "stop": list(job.stop),
        }
        docs.append(
            LLMResult(
                **common,
                text=out.text,
                finish_reason=out.finish_reason,  # type: ignore[arg-type]
                usage=Usage(
                    prompt_tokens=out.prompt_tokens, completion_tokens=out.completion_tokens
                ),
                provenance=provenance,
            )
        )
    return docs, blobs
