"""One dispatched batch end to end: claim, skip what is done, run, write results, settle.

Per batch: skip jobs that already have a result (redelivery), mark the rest running, run the
engine once per model, write every result to S3 concurrently, then record terminal states in
one pipelined call. Infrastructure errors propagate (the task retries); job errors fail only
their jobs.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import redis
from pydantic import TypeAdapter, ValidationError

from engines.base import Output
from engines.cache import EngineCache
from engines.documents import result_docs
from engines.early import EarlyWriter, on_finished
from engines.metrics import WorkerMetrics
from engines.recovery import run_with_retries
from engines.settle import Settled, merge, settle_in_batch_object, settle_per_job
from engines.shadow import run_shadow
from pipelines.errors import ModelUnavailable, ServiceUnavailable
from pipelines.fleet import BatchTimes, Leases
from pipelines.jobs import AnyJob, Job, is_job_id, job_seed
from pipelines.observe import trace
from pipelines.observe.spans import Spans
from pipelines.result_cache import ResultCache
from pipelines.results import (
    RESULT_TYPES,
    AnyResult,
    LLMResult,
)
from pipelines.settings import BlazeSettings
from pipelines.stores.deadletters import DeadLetter, DeadLetterStore
from pipelines.stores.results import ResultStore
from pipelines.stores.status import Claim, GroupsDone, JobState, StatusStore, StatusUpdate

log = logging.getLogger(__name__)

RECENT = 20  # failures a worker keeps for its heartbeat (blaze top, the dashboard)
EWMA = 0.3  # weight of the newest batch in the seconds-per-job average

_JOB: TypeAdapter[AnyJob] = TypeAdapter(Job)


class BatchRunner:
    """Runs one dispatched batch end to end; safe to call again with the same batch.

    Per batch: claim the jobs (a cancelled job is refused and never runs), skip jobs whose
    earlier attempt already left a result, run the engine once per model (jobs it reports
    finished mid-call are settled then, ``engines.early``), write images and then result
    documents in the model's layout with first-writer-wins writes (``engines.settle``),
    record terminal states in one call, and write the batch manifest. ``on_groups_done``
    hears of groups (OpenAI-style batches) whose last job this batch settled.
    """

    def __init__(
        self,
        settings: BlazeSettings,
        results: ResultStore,
        status: StatusStore,
        engines: EngineCache,
        on_groups_done: GroupsDone | None = None,
        worker_name: str = "",
        metrics: WorkerMetrics | None = None,
        dead_letters: DeadLetterStore | None = None,
        batch_times: BatchTimes | None = None,
        layout_of: Callable[[str], str] | None = None,
        answers: ResultCache | None = None,
        leases: Leases | None = None,
    ) -> None:
        self.settings = settings
        self.leases = leases  # marks the batch on the engine (whom a worker's death blames)
        # a model's result layout (``pipelines.stores.batch_results``); default: s3.layout
        self.layout_of = layout_of or (lambda model: settings.s3.layout)
        # seconds per batch by (model, batch size), averaged, shared for SLO batching
        self.batch_times = batch_times
        self.answers = answers  # the result cache, where jobs with a cache key leave answers
        self.call_seconds: dict[tuple[str, int], float] = {}
        self._timed: list[tuple[str, int]] = []
        self._early: list[Settled] = []
        self._cache_keys: dict[str, str] = {}  # the batch's jobs' result-cache keys
        self._batch_id = ""
        self._alone = False  # a batch the reaper sent back to run by itself
        self.metrics = metrics
        self.current: dict[str, Any] | None = None  # the batch in hand, for heartbeats
        self.last: dict[str, Any] | None = None  # the last batch's end and outcome
        self.failures: deque[dict[str, Any]] = deque(maxlen=RECENT)  # newest last
        # the batch in hand's engine calls, those the device failed and job reruns
        self.outcome: Counter[str] = Counter()
        self.sec_per_job: float | None = None  # EWMA of recent batches (fastest routing)
        self.dead_letters = dead_letters
        self.spans = Spans(settings, "blaze-worker")
        self.results = results
        self.status = status
        self.engines = engines
        self.on_groups_done = on_groups_done
        self.worker_name = worker_name or f"{socket.gethostname()}:{os.getpid()}"

    def run(self, payload: dict[str, Any]) -> dict[str, int]:
        """Run one batch (see the class docstring); returns counts by outcome."""
        if payload.get("shadow"):  # copies run on a shadow version: apart, no state
            return run_shadow(self.settings, self.results, self.engines, payload)
        started = time.time()
        self.outcome = Counter(engine_calls=0, device_failed=0, retried=0)
        self._timed = []  # (model, size) of each engine call that ran clean
        self._early = []  # what engine calls of this batch settled before they returned
        keys = payload.get("cache_keys")
        self._cache_keys = keys if isinstance(keys, dict) else {}
        raw_jobs = payload.get("jobs", [])
        self.current = {
            "batch_id": payload.get("batch_id"),
            "jobs": len(raw_jobs) if isinstance(raw_jobs, list) else 0,
            "started_at": started,
        }
        busy = self.metrics.busy.labels(self.metrics.device) if self.metrics else None
        if busy is not None:  # batches in hand (1 at most unless worker.batches_in_hand > 1)
            busy.inc()
        outcome: dict[str, Any] = {"error": "the batch raised"}
        raw_traces = payload.get("traces")
        traces: dict[str, str] = raw_traces if isinstance(raw_traces, dict) else {}
        try:
            with self.spans.span(
                "blaze.batch",
                links=list(traces.values()),
                batch_id=str(payload.get("batch_id") or ""),
                jobs=self.current["jobs"],
                device=self.engines.device,
                worker=self.worker_name,
            ):
                summary = self._run(payload, started, traces)
            if len(self._timed) == 1:  # one clean call: the batch's seconds, claim to write
                self._time_call(*self._timed[0], time.time() - started)
            summary.update(self.outcome)
            outcome = dict(summary)
            ran = summary["succeeded"] + summary["failed"]
            if ran:
                per_job = (time.time() - started) / ran
                prev = self.sec_per_job
                self.sec_per_job = per_job if prev is None else EWMA * per_job + (1 - EWMA) * prev
            return summary
        except Exception as exc:
            outcome = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
            raise
        finally:
            if busy is not None:
                busy.dec()
            self.last = {**self.current, "finished_at": time.time(), "outcome": outcome}
            self.current = None

    def _run(
        self, payload: dict[str, Any], started: float, traces: dict[str, str]
    ) -> dict[str, int]:
        queued_at = float(payload.get("queued_at", started))
        self._batch_id = str(payload.get("batch_id") or "") or uuid.uuid4().hex
        self._alone = bool(payload.get("alone"))
        jobs, broken = self._parse(payload.get("jobs", []))
        # Unseeded jobs get a seed from their id: a rerun reproduces the same output.
        jobs = [
            j if j.seed is not None else j.model_copy(update={"seed": job_seed(j.job_id)})
            for j in jobs
        ]
        keys = {j.job_id: self.settings.result_key(j.job_id) for j in jobs}
        claims = self.status.claim(list(keys), started)
        claimed = [j for j in jobs if claims[j.job_id].claimed]
        # each job's hop of the trace it arrived with, recorded in its result's provenance
        hops = {j.job_id: trace.child(traces[j.job_id]) for j in jobs if traces.get(j.job_id)}
        cancelled = [j for j in jobs if claims[j.job_id].state is JobState.CANCELLED]
        late = self._past_deadline(claimed, started)
        if late:
            claimed = [j for j in claimed if j.job_id not in late]
        # Only a job claimed before can have a result (claims precede results), so the
        # bucket is asked about those alone instead of a HEAD per job.
        rerun = [keys[j.job_id] for j in claimed if claims[j.job_id].attempts > 1]
        done = self.results.existing(rerun) if rerun else set()
        todo = [j for j in claimed if keys[j.job_id] not in done]
        docs: list[AnyResult] = list(broken)
        blobs: list[tuple[str, bytes, str]] = []
        by_model: dict[str, list[AnyJob]] = {}
        refs = payload.get("versions")
        refs = refs if isinstance(refs, dict) else {}
        for j in todo:  # one engine per version of a model (name@N), as the consumer chose
            by_model.setdefault(str(refs.get(j.job_id, j.model)), []).append(j)
        for model, group in by_model.items():
            got_docs, got_blobs = self._run_model(model, group, queued_at, len(jobs), hops)
            docs.extend(got_docs)
            blobs.extend(got_blobs)
        batch = _Claimed(jobs, keys, claims, claimed, cancelled, done)
        with self.spans.span("blaze.write", results=len(docs), images=len(blobs)):
            return self._write(payload, batch, docs, blobs, started)

    def _past_deadline(self, claimed: list[AnyJob], now: float) -> set[str]:
        """End jobs whose deadline passed while they waited for a worker: dead, not run."""
        late = {
            j.job_id: j for j in claimed if j.deadline is not None and j.deadline.timestamp() < now
        }
        if not late:
            return set()
        reasons = {
            jid: f"deadline {j.deadline.isoformat()} passed while queued for a worker"
            for jid, j in late.items()
            if j.deadline is not None
        }
        self.status.update(
            [StatusUpdate(jid, JobState.DEAD, why, now) for jid, why in reasons.items()]
        )
        self._dead_letter([(late[jid], why) for jid, why in reasons.items()])
        return set(late)

    def _dead_letter(self, jobs: list[tuple[AnyJob, str]]) -> None:
        """Jobs that did not succeed, to the dead-letter topic (``blaze dlq``), stage worker."""
        if self.dead_letters is None or not jobs:
            return
        letters = [
            DeadLetter(
                "worker",
                why,
                j.job_id,
                payload=j.model_dump_json(exclude_defaults=False)[:4096],
            )
            for j, why in jobs
        ]
        try:
            self.dead_letters.send(letters)
        except ServiceUnavailable as exc:  # the status and result already say why
            log.warning("could not dead-letter %d jobs: %s", len(letters), exc)

    def _write(
        self,
        payload: dict[str, Any],
        batch: _Claimed,
        docs: list[AnyResult],
        blobs: list[tuple[str, bytes, str]],
        started: float,
    ) -> dict[str, int]:
        """Store images, then result documents, then terminal states and the manifest."""
        jobs, claims = batch.jobs, batch.claims
        claimed, cancelled = batch.claimed, batch.cancelled
        # Images first: whoever sees a result document finds every image it names. Both are
        # first-writer-wins, so a concurrent rerun of a job can never replace its result.
        self.results.put_many(blobs, if_absent=True)
        docs.extend(cancelled_result(j, claims[j.job_id].attempts) for j in cancelled)
        early = merge(self._early)  # what the engine finished and was written mid-call
        docs = [d for d in docs if d.job_id not in early.final and d.job_id not in early.taken]
        done = {j for j, k in batch.keys.items() if k in batch.done}
        settled = merge([early, self._settle(jobs, self._batch_id, docs, done)])
        now = time.time()
        final, taken, applied = settled.final, settled.taken, settled.applied
        self._write_manifest(payload, jobs, final, started, now, settled.where)
        by_id = {j.job_id: j for j in jobs}
        mine = [d for d in docs if d.job_id not in taken]
        mine += [d for j, d in early.final.items() if j not in early.taken]
        self._dead_letter(
            [
                (by_id[d.job_id], d.error or "failed")
                for d in mine
                if d.status == "failed" and d.job_id in by_id
            ]
        )
        if applied.groups_done and self.on_groups_done is not None:
            self.on_groups_done(applied.groups_done)
        self._remember({j: d for j, d in final.items() if j not in early.final})
        if self.metrics is not None:
            self._count(jobs, claimed, claims, mine, now)
        ok = sum(d.status == "succeeded" for d in final.values())
        return {
            "jobs": len(jobs),
            "succeeded": ok,
            "failed": sum(d.status == "failed" for d in final.values()),
            "cancelled": len(cancelled),
            "skipped": len(jobs) - len(claimed) - len(cancelled) + len(taken),
        }

    def _settle(
        self, jobs: Sequence[AnyJob], batch_id: str, docs: list[AnyResult], done: set[str]
    ) -> Settled:
        """Write ``docs`` in the model's result layout, then record the jobs' states."""
        if jobs and self.layout_of(jobs[0].model) == "batch":
            return settle_in_batch_object(self.settings, self.results, self.status, batch_id, docs)
        return settle_per_job(self.settings, self.results, self.status, docs, done)

    def _count(
        self,
        jobs: list[AnyJob],
        claimed: list[AnyJob],
        claims: dict[str, Claim],
        written: list[AnyResult],
        now: float,
    ) -> None:
        """Counts of the batch: each job this attempt settled counts once, by its state."""
        m = self.metrics
        assert m is not None
        m.batches.labels(m.device).inc()
        by_id = {j.job_id: j for j in jobs}
        for j in claimed:
            if claims[j.job_id].attempts > 1:
                m.redeliveries.labels(j.kind).inc()
        # one labels() lookup per (kind, model, state), not per job: this runs for every job
        ended: Counter[tuple[str, str, str]] = Counter()
        e2e: dict[tuple[str, str], list[float]] = {}
        for d in written:
            job = by_id.get(d.job_id)
            kind = job.kind if job else d.kind
            ran = str(d.provenance.get("model_version") or d.model)  # name@N where versioned
            ended[(kind, ran, d.status)] += 1
            if job is not None and d.status != "cancelled":
                e2e.setdefault((kind, ran), []).append(now - job.submitted_at.timestamp())
            if d.status == "failed":
                self.failures.append(
                    {
                        "job_id": d.job_id,
                        "model": d.model,
                        "reason": (d.error or "")[:300],
                        "at": now,
                    }
                )
        for (k, model, state), n in ended.items():
            m.ended.labels(k, model, state).inc(n)
        for (k, model), waits in e2e.items():
            hist = m.e2e.labels(k, model)
            for wait in waits:
                hist.observe(max(0.0, wait))

    def _write_manifest(
        self,
        payload: dict[str, Any],
        jobs: list[AnyJob],
        final: dict[str, AnyResult],
        started: float,
        finished: float,
        where: dict[str, tuple[str, tuple[int, int] | None]],
    ) -> None:
        batch_id = str(payload.get("batch_id") or "")
        if not batch_id or not is_job_id(batch_id):
            return
        rows = []
        for j in jobs:
            doc = final.get(j.job_id)
            key, span = where.get(j.job_id, (self.settings.result_key(j.job_id), None))
            row: dict[str, Any] = {
                "job_id": j.job_id,
                "model": j.model,
                "status": doc.status if doc else "skipped",
                "key": key,
            }
            if span is not None:  # its line of a batch object
                row["offset"], row["length"] = span
            rows.append(row)
        in_objects = bool(jobs) and self.layout_of(jobs[0].model) == "batch"
        if in_objects and any(r["status"] == "skipped" for r in rows):
            rows = self._keep_indexed(batch_id, rows)
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

    def _keep_indexed(self, batch_id: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A rerun of a batch skips the jobs an earlier attempt settled; where that attempt
        indexed them in a batch object, its manifest rows stay (they are the plain reader's
        only index of those lines)."""
        old = self.results.get(self.settings.manifest_key(batch_id))
        try:
            before = {r["job_id"]: r for r in json.loads(old or b"{}").get("jobs", [])}
        except (ValueError, AttributeError, TypeError, KeyError):
            return rows
        return [
            before[r["job_id"]]
            if r["status"] == "skipped" and "offset" in before.get(r["job_id"], {})
            else r
            for r in rows
        ]

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
        self,
        model: str,
        jobs: list[AnyJob],
        queued_at: float,
        batch_size: int,
        hops: dict[str, str],
    ) -> tuple[list[AnyResult], list[tuple[str, bytes, str]]]:
        t0 = time.time()
        failed = False
        fleet = self.settings.fleet
        timing = (t0, queued_at, batch_size)
        writer = EarlyWriter(lambda done: self._settle_early(model, jobs, done, timing, hops))
        try:
            with (
                self.spans.span("blaze.engine", model=model, jobs=len(jobs)),
                on_finished(writer.add),
            ):
                got = run_with_retries(
                    self.engines,
                    model,
                    jobs,
                    retries=fleet.engine_retries,
                    backoff_s=fleet.retry_backoff_s,
                    alone=self._alone,
                    running=self._on_engine,
                )
            outputs, prov = got.outputs, got.engine.describe()
            self.outcome["engine_calls"] += 1
            self.outcome["device_failed"] += got.device_failed
            self.outcome["retried"] += got.retried
            failed = got.device_failed
        except ModelUnavailable as exc:
            outputs, prov, failed = [Output(error=str(exc))] * len(jobs), {"model": model}, True
        finally:
            writer.close()
        compute = time.time() - t0
        if not failed:
            self._timed.append((model, len(jobs)))
        if self.metrics is not None:
            self._count_call(model, jobs, outputs, t0, queued_at, compute, failed)
        return result_docs(
            self.settings,
            model,
            jobs,
            outputs,
            prov,
            (t0, compute, queued_at),
            batch_size,
            hops,
        )

    def _on_engine(self) -> AbstractContextManager[object]:
        if self.leases is None:
            return nullcontext()
        return self.leases.on_engine(self._batch_id, self.worker_name)

    def _settle_early(
        self,
        model: str,
        jobs: list[AnyJob],
        done: list[tuple[str, Output]],
        timing: tuple[float, float, int],
        hops: dict[str, str],
    ) -> set[str]:
        """Settle jobs the engine reported finished mid-call (``engines.early``; on the
        writer's thread); returns the job ids settled."""
        engine = self.engines.loaded(model)
        by_id = {j.job_id: j for j in jobs}
        pairs = [(by_id[j], out) for j, out in done if j in by_id]
        if engine is None or not pairs:
            return set()
        t0, queued_at, batch_size = timing
        docs, _ = result_docs(
            self.settings,
            model,
            [j for j, _ in pairs],
            [out for _, out in pairs],
            engine.describe(),
            (t0, time.time() - t0, queued_at),
            batch_size,
            hops,
        )
        settled = self._settle([j for j, _ in pairs], self._batch_id, docs, set())
        self._early.append(settled)
        self._remember(settled.final)
        return set(settled.final) | settled.taken

    def _remember(self, final: dict[str, AnyResult]) -> None:
        """Leave the answers of jobs the consumer gave a cache key in the result cache."""
        keys = self._cache_keys
        if self.answers is not None and keys:
            self.answers.store([(keys[j], d) for j, d in final.items() if j in keys])

    def _time_call(self, model: str, size: int, seconds: float) -> None:
        """Average a batch's seconds, from claiming its jobs to writing their results, into
        its (model, size) and share it (``BatchTimes``): what a latency target has to cover."""
        prev = self.call_seconds.get((model, size))
        avg = seconds if prev is None else EWMA * seconds + (1 - EWMA) * prev
        self.call_seconds[(model, size)] = avg
        if self.batch_times is None:
            return
        try:
            self.batch_times.record(model, size, avg)
        except (redis.RedisError, OSError) as exc:
            log.warning("batch time of %s not shared: %s", model, exc)

    def _count_call(
        self,
        model: str,
        jobs: list[AnyJob],
        outputs: list[Output],
        t0: float,
        queued_at: float,
        compute: float,
        failed: bool,
    ) -> None:
        m = self.metrics
        assert m is not None
        kind = jobs[0].kind
        m.engine_calls.labels(kind, model, m.device).inc()
        if failed:
            m.engine_errors.labels(kind, model, m.device).inc()
        m.compute.labels(kind, model).observe(compute)
        m.batch_wait.labels(kind, model).observe(max(0.0, t0 - queued_at))
        queue_wait = m.queue_wait.labels(kind, model)
        for job in jobs:
            queue_wait.observe(max(0.0, t0 - job.submitted_at.timestamp()))
        prompt = sum(o.prompt_tokens for o in outputs)
        generated = sum(o.completion_tokens for o in outputs)
        images = sum(len(o.images) for o in outputs)
        if prompt:
            m.prompt_tokens.labels(model).inc(prompt)
        if generated:
            m.generation_tokens.labels(model).inc(generated)
            if compute > 0:
                m.tokens_per_s.labels(model).observe(generated / compute)
        if images:
            m.images.labels(model).inc(images)


@dataclass(frozen=True)
class _Claimed:
    """A batch after its claim: its jobs, their result keys and claims, and which to skip."""

    jobs: list[AnyJob]
    keys: dict[str, str]
    claims: dict[str, Claim]
    claimed: list[AnyJob]
    cancelled: list[AnyJob]
    done: set[str]


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
