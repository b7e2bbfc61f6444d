"""The worker: one process pinned to one device, running whole batches from its Celery queue.

Per batch: skip jobs that already have a result (redelivery), mark the rest running, run the
engine once per model, write every result to S3 concurrently, then record terminal states in
one pipelined call. Infrastructure errors retry the task; job errors fail only their jobs.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import socket
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from pydantic import TypeAdapter, ValidationError

from engines.base import Engine, Output
from engines.devices import pin_device
from pipelines.errors import ModelUnavailable, ServiceUnavailable
from pipelines.jobs import AnyJob, DiffusionJob, EmbedJob, Job, is_job_id, job_seed
from pipelines.registry import Registry, load_registry
from pipelines.results import (
    RESULT_TYPES,
    AnyResult,
    DiffusionResult,
    EmbedResult,
    ImageRef,
    LLMResult,
    Usage,
    parse_result,
)
from pipelines.settings import BlazeSettings
from pipelines.status import JobState, StatusStore, StatusUpdate
from pipelines.storage import ResultStore
from pipelines.tasks import RUN_BATCH, celery_app

log = logging.getLogger(__name__)

EngineFactory = Callable[[str], Engine[Any]]
_JOB: TypeAdapter[AnyJob] = TypeAdapter(Job)
RETRY_FAILED_LOAD_S = 60.0


@dataclass
class EngineCache:
    """Engines by model name, each loaded once on this worker's device and then reused.

    With a ``budget_bytes``, loading a model that would not fit unloads the least recently
    used ones first. A model that fails to load is remembered as unhealthy for
    ``RETRY_FAILED_LOAD_S``: its jobs fail with the load error instead of the worker crashing
    or reloading every batch.
    """

    factory: EngineFactory
    device: str
    budget_bytes: int | None = None
    engines: OrderedDict[str, Engine[Any]] = field(default_factory=OrderedDict)
    failures: dict[str, tuple[float, str]] = field(default_factory=dict)
    unloaded: list[str] = field(default_factory=list)

    def get(self, model: str) -> Engine[Any]:
        if model in self.engines:
            self.engines.move_to_end(model)
            return self.engines[model]
        failed = self.failures.get(model)
        if failed and time.monotonic() - failed[0] < RETRY_FAILED_LOAD_S:
            raise ModelUnavailable(failed[1])
        try:
            engine = self.factory(model)
            engine.load(self.device)
        except ModelUnavailable as exc:
            self.failures[model] = (time.monotonic(), str(exc))
            raise
        except Exception as exc:  # any loader error marks the model unhealthy, not the worker
            msg = f"model {model} failed to load: {type(exc).__name__}: {exc}"
            self.failures[model] = (time.monotonic(), msg)
            raise ModelUnavailable(msg) from exc
        self.failures.pop(model, None)
        self.engines[model] = engine
        self._fit_budget(keep=model)
        return engine

    def loaded_bytes(self) -> int:
        return sum(_memory_bytes(e) for e in self.engines.values())

    def _fit_budget(self, keep: str) -> None:
        if self.budget_bytes is None:
            return
        while self.loaded_bytes() > self.budget_bytes and len(self.engines) > 1:
            victim = next(m for m in self.engines if m != keep)
            del self.engines[victim]
            self.unloaded.append(victim)
            free_accelerator_memory()
            log.info("unloaded %s (least recently used) to stay under the memory budget", victim)

    def health(self) -> dict[str, str]:
        out = {m: "loaded" for m in self.engines}
        out.update({m: f"unhealthy: {why}" for m, (_, why) in self.failures.items()})
        return out


def _memory_bytes(engine: Engine[Any]) -> int:
    size = getattr(engine, "memory_bytes", None)
    return int(size()) if callable(size) else 0


GroupsDone = Callable[[set[str]], None]


class BatchRunner:
    """Runs one dispatched batch end to end; safe to call again with the same batch.

    Per batch: claim the jobs (a cancelled job is refused and never runs), skip jobs whose
    earlier attempt already left a result, run the engine once per model, write images and
    then result documents with first-writer-wins puts, record terminal states in one call,
    and write the batch manifest. ``on_groups_done`` hears of groups (OpenAI-style batches)
    whose last job this batch settled.
    """

    def __init__(
        self,
        settings: BlazeSettings,
        results: ResultStore,
        status: StatusStore,
        engines: EngineCache,
        on_groups_done: GroupsDone | None = None,
        worker_name: str = "",
    ) -> None:
        self.settings = settings
        self.results = results
        self.status = status
        self.engines = engines
        self.on_groups_done = on_groups_done
        self.worker_name = worker_name or f"{socket.gethostname()}:{os.getpid()}"

    def run(self, payload: dict[str, Any]) -> dict[str, int]:
        started = time.time()
        queued_at = float(payload.get("queued_at", started))
        jobs, broken = self._parse(payload.get("jobs", []))
        # Unseeded jobs get a seed from their id: a rerun reproduces the same output.
        jobs = [
            j if j.seed is not None else j.model_copy(update={"seed": job_seed(j.job_id)})
            for j in jobs
        ]
        keys = {j.job_id: self.settings.result_key(j.job_id) for j in jobs}
        claims = self.status.claim(list(keys), started)
        claimed = [j for j in jobs if claims[j.job_id].claimed]
        cancelled = [j for j in jobs if claims[j.job_id].state is JobState.CANCELLED]
        # Only a job claimed before can have a result (claims precede results), so the
        # bucket is asked about those alone instead of a HEAD per job.
        rerun = [keys[j.job_id] for j in claimed if claims[j.job_id].attempts > 1]
        done = self.results.existing(rerun) if rerun else set()
        todo = [j for j in claimed if keys[j.job_id] not in done]
        docs: list[AnyResult] = list(broken)
        blobs: list[tuple[str, bytes, str]] = []
        by_model: dict[str, list[AnyJob]] = {}
        for j in todo:
            by_model.setdefault(j.model, []).append(j)
        for model, group in by_model.items():
            got_docs, got_blobs = self._run_model(model, group, queued_at, len(jobs))
            docs.extend(got_docs)
            blobs.extend(got_blobs)
        # Images first: whoever sees result.json finds every image it names. Both are
        # first-writer-wins, so a concurrent rerun of a job can never replace its result.
        self.results.put_many(blobs, if_absent=True)
        docs.extend(cancelled_result(j, claims[j.job_id].attempts) for j in cancelled)
        items = [
            (
                keys.get(d.job_id) or self.settings.result_key(d.job_id),
                d.to_json(),
                "application/json",
            )
            for d in docs
        ]
        taken = self.results.put_many(items, if_absent=True)
        taken |= done
        final = {d.job_id: d for d in docs if keys.get(d.job_id) not in taken}
        final.update(self._read_existing(taken))
        now = time.time()
        applied = self.status.update(
            [
                StatusUpdate(d.job_id, _STATE[d.status], d.error or "", now)
                for d in final.values()
                if d.status != "cancelled"
            ]
        )
        self._write_manifest(payload, jobs, final, started, now)
        if applied.groups_done and self.on_groups_done is not None:
            self.on_groups_done(applied.groups_done)
        ok = sum(d.status == "succeeded" for d in final.values())
        return {
            "jobs": len(jobs),
            "succeeded": ok,
            "failed": sum(d.status == "failed" for d in final.values()),
            "cancelled": len(cancelled),
            "skipped": len(jobs) - len(claimed) - len(cancelled) + len(taken),
        }

    def _read_existing(self, keys: set[str]) -> dict[str, AnyResult]:
        """Result documents another attempt wrote first: they are the job's outcome."""
        out: dict[str, AnyResult] = {}
        for key in keys:
            raw = self.results.get(key)
            if raw is not None:
                doc = parse_result(raw)
                out[doc.job_id] = doc
        if keys:
            log.info("kept %d results an earlier attempt had written", len(keys))
        return out

    def _write_manifest(
        self,
        payload: dict[str, Any],
        jobs: list[AnyJob],
        final: dict[str, AnyResult],
        started: float,
        finished: float,
    ) -> None:
        batch_id = str(payload.get("batch_id") or "")
        if not batch_id or not is_job_id(batch_id):
            return
        rows = []
        for j in jobs:
            doc = final.get(j.job_id)
            rows.append(
                {
                    "job_id": j.job_id,
                    "model": j.model,
                    "status": doc.status if doc else "skipped",
                    "key": self.settings.result_key(j.job_id),
                }
            )
        manifest = {
            "batch_id": batch_id,
            "worker": self.worker_name,
            "device": self.engines.device,
            "queued_at": payload.get("queued_at"),
            "started_at": started,
            "finished_at": finished,
            "counts": {s: sum(r["status"] == s for r in rows) for s in {r["status"] for r in rows}},
            "jobs": rows,
        }
        body = json.dumps(manifest, indent=1).encode()
        self.results.put_many([(self.settings.manifest_key(batch_id), body, "application/json")])

    def _parse(self, raw_jobs: Sequence[Any]) -> tuple[list[AnyJob], list[AnyResult]]:
        jobs: list[AnyJob] = []
        broken: list[AnyResult] = []
        for raw in raw_jobs:
            try:
                jobs.append(_JOB.validate_python(raw))
            except ValidationError as exc:
                # Only reachable if a producer bypassed intake; fail the job if it has an id.
                jid = raw.get("job_id") if isinstance(raw, dict) else None
                if is_job_id(jid):
                    reason = f"invalid job reached the worker: {exc.error_count()} errors"
                    model = str(raw.get("model", ""))
                    broken.append(LLMResult(job_id=jid, status="failed", model=model, error=reason))
                else:
                    log.error("dropping unidentifiable job in batch: %s", exc)
        return jobs, broken

    def _run_model(
        self, model: str, jobs: list[AnyJob], queued_at: float, batch_size: int
    ) -> tuple[list[AnyResult], list[tuple[str, bytes, str]]]:
        t0 = time.time()
        try:
            engine = self.engines.get(model)
            outputs = run_isolated(engine, jobs, free_accelerator_memory)
            prov = engine.describe()
        except ModelUnavailable as exc:
            outputs, prov = [Output(error=str(exc))] * len(jobs), {"model": model}
        except Exception as exc:
            log.exception("engine %s failed on a batch of %d", model, len(jobs))
            outputs = [Output(error=f"engine error: {type(exc).__name__}: {exc}")] * len(jobs)
            prov = {"model": model}
        compute = time.time() - t0
        docs: list[AnyResult] = []
        blobs: list[tuple[str, bytes, str]] = []
        for job, out in zip(jobs, outputs, strict=True):
            common: dict[str, Any] = {
                "job_id": job.job_id,
                "status": "failed" if out.error else "succeeded",
                "model": model,
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
                "batch_size": batch_size,
                "seed": job.seed if seed is None else seed,
            }
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
                    key = f"{self.settings.result_prefix(job.job_id)}image-{k}.png"
                    blobs.append((key, png, "image/png"))
                    seed = None if out.info.get("seed") is None else out.info["seed"] + k
                    refs.append(
                        ImageRef(
                            key=key, seed=seed, width=job.width, height=job.height, bytes=len(png)
                        )
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


_STATE = {
    "succeeded": JobState.SUCCEEDED,
    "failed": JobState.FAILED,
    "cancelled": JobState.CANCELLED,
}


def cancelled_result(job: AnyJob, attempts: int) -> AnyResult:
    """The result document of a job cancelled before it ran."""
    return RESULT_TYPES[job.kind](
        job_id=job.job_id,
        status="cancelled",
        model=job.model,
        error="cancelled before it ran",
        tags=dict(job.tags),
        provenance={"attempts": attempts},
    )


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA/CPU out-of-memory errors, whichever way the framework raised them."""
    if isinstance(exc, MemoryError):
        return True
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


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
            return [Output(error=why[:1000])]
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


def engine_factory(
    settings: BlazeSettings, dtype: str | None = None, registry: Registry | None = None
) -> EngineFactory:
    """Builds the engine a registered model asks for; ``dtype`` overrides the registry's."""
    from engines.echo import EchoEngine
    from engines.models import resolve_model

    state = {"registry": registry or load_registry(settings)}

    def make(model: str) -> Engine[Any]:
        spec = state["registry"].get(model)
        if spec is None:  # a folder may have appeared since start-up
            state["registry"] = load_registry(settings)
            spec = state["registry"].get(model)
        if spec is None:
            known = ", ".join(state["registry"].names())
            raise ModelUnavailable(f"unknown model {model!r} (known: {known})")
        if dtype is not None:
            spec = spec.model_copy(update={"dtype": dtype})
        if spec.engine_name == "echo":
            return EchoEngine(model)
        if spec.kind == "diffusion":
            from engines.diffusion import DiffusersEngine

            return DiffusersEngine(model, resolve_model(settings, spec), spec)
        if spec.kind == "embed":
            from engines.embed import TransformersEmbedder

            return TransformersEmbedder(model, resolve_model(settings, spec), dtype=spec.dtype)
        from engines.llm import TransformersLLM

        folder = resolve_model(settings, spec)
        return TransformersLLM(model, folder, dtype=spec.dtype, quantize=spec.quantize)

    return make


def worker_app(settings: BlazeSettings, runner: BatchRunner) -> Celery:
    """A Celery app with ``blaze.run_batch`` bound to ``runner``."""
    app = celery_app(settings, name=f"{settings.namespace}-worker")

    @app.task(  # type: ignore[untyped-decorator]
        name=RUN_BATCH, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None
    )
    def run_batch(self: Any, payload: dict[str, Any]) -> dict[str, int]:
        try:
            summary = runner.run(payload)
        except ServiceUnavailable as exc:
            # Results could not be stored: retry the whole (idempotent) batch later.
            log.warning("batch %s: %s; retrying", payload.get("batch_id"), exc)
            raise self.retry(
                exc=exc, countdown=min(60, 2 ** min(self.request.retries, 6))
            ) from None
        log.info("batch %s: %s", payload.get("batch_id"), summary)
        return summary

    return app


def run_worker(
    settings: BlazeSettings,
    device: str = "cpu",
    preload: Sequence[str] = (),
    dtype: str | None = None,
    loglevel: str = "INFO",
    kinds: Sequence[str] = ("llm", "diffusion", "embed"),
) -> None:
    """Serve ``{namespace}.{kind}.{device}`` for each kind until SIGTERM.

    Warm shutdown finishes the batch in hand; a batch taken but not finished by a process
    that dies goes back to the queue (late acknowledgement).
    """
    torch_device = pin_device(device)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from transformers.utils import logging as hf_logging

    from pipelines.client import Client
    from pipelines.openai_batch import finalize_groups
    from pipelines.status import status_store
    from pipelines.storage import S3ResultStore

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    if settings.worker.torch_threads:
        torch.set_num_threads(settings.worker.torch_threads)
    store = S3ResultStore(settings)
    store.ensure_bucket()
    status = status_store(settings)
    budget = settings.worker.memory_budget_mb
    cache = EngineCache(
        engine_factory(settings, dtype), torch_device, None if budget is None else budget << 20
    )
    for model in preload:
        try:
            cache.get(model)
        except ModelUnavailable as exc:
            log.error("preload: %s", exc)
    queues = ",".join(settings.queue(kind, device) for kind in kinds)
    name = f"{settings.namespace}-{device.replace(':', '')}@%h"
    batches = finalize_groups(Client(settings, status_store=status, result_store=store))
    runner = BatchRunner(
        settings, store, status, cache, batches, name.replace("%h", socket.gethostname())
    )
    app = worker_app(settings, runner)
    app.worker_main(
        [
            "worker",
            "--queues",
            queues,
            "--pool",
            "solo",
            "--concurrency",
            "1",
            "--hostname",
            name,
            "--loglevel",
            loglevel,
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )
