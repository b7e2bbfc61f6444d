"""Airflow operators and the trigger that run template steps (imported by DAG files only).

- ``BlazeJobsOperator``: builds the step's jobs, publishes them through the SDK, then defers to
  ``BlazeJobsTrigger`` (no worker slot is held while the models run). When every job has ended
  it collects the results, or fails the task naming each failed job id and its reason.
- ``BlazeTransformOperator``: runs a built-in transform.
- ``BlazeBranchOperator``: a ``branch`` step; the steps it does not choose are skipped.

Operators hold only the template's path and the step id: building a DAG opens no connection.
Settings come from the ``BLAZE_*`` environment of the Airflow process (``blaze stack up
--with-airflow`` sets it); the namespace can be overridden per run with the ``blaze_namespace``
key of the run's conf.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.bases.branch import BaseBranchOperator
from airflow.sdk.exceptions import AirflowException
from airflow.triggers.base import BaseTrigger, TriggerEvent

from pipelines.client import Client
from pipelines.errors import BlazeError
from pipelines.results import parse_result
from pipelines.settings import BlazeSettings, load_settings
from pipelines.stores.batch_results import read_results
from pipelines.stores.redis_client import async_status_client
from pipelines.stores.status import JobState
from pipelines.stores.status_redis import job_key
from pipelines.templates.spec import (
    BranchStep,
    DiffusionStep,
    EmbedStep,
    LLMStep,
    load_template,
    resolve_params,
)
from pipelines.templates.steps import (
    RunContext,
    build_jobs,
    choose_branch,
    job_outputs,
    run_transform,
)

log = logging.getLogger(__name__)
NAMESPACE_KEY = "blaze_namespace"


def _settings(context: Any) -> BlazeSettings:
    conf = (context.get("dag_run") and context["dag_run"].conf) or {}
    ns = conf.get(NAMESPACE_KEY) if isinstance(conf, dict) else None
    return load_settings(namespace=ns) if ns else load_settings()


class _StepOperator(BaseOperator):
    """Common part: find the template and step, and build the step's view of the run."""

    ui_color = "#fde9d9"

    def __init__(self, *, template_path: str, step_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.template_path = template_path
        self.step_id = step_id

    def _context(self, context: Any, settings: BlazeSettings) -> RunContext:
        return run_context(self.template_path, self.step_id, context, settings)


def run_context(
    template_path: str, step_id: str, context: Any, settings: BlazeSettings
) -> RunContext:
    """The step's view of the run: parameters, and the outputs of every step before it."""
    template = load_template(Path(template_path))
    conf = dict(context["params"])
    conf.pop(NAMESPACE_KEY, None)
    try:
        params = resolve_params(template, conf)
    except BlazeError as exc:
        raise AirflowException(str(exc)) from None
    step = template.step(step_id)
    ti = context["ti"]
    outputs = {sid: ti.xcom_pull(task_ids=sid) for sid in sorted(template.ancestors(step))}
    return RunContext(template, context["run_id"], params, outputs, settings.namespace)


class BlazeJobsOperator(_StepOperator):
    """Runs an ``llm``/``diffusion``/``embed`` step as Blaze jobs and waits without a slot."""

    def execute(self, context: Any) -> Any:
        settings = _settings(context)
        ctx = self._context(context, settings)
        step = ctx.template.step(self.step_id)
        assert isinstance(step, LLMStep | DiffusionStep | EmbedStep)
        try:
            jobs = build_jobs(ctx, step)
        except BlazeError as exc:
            raise AirflowException(str(exc)) from None
        if not jobs:
            return job_outputs(step, [])
        ids = [j.job_id for j in jobs]
        with Client(settings) as client:  # a retried task reruns what failed, keeps the rest
            done = client.resubmit(jobs)
        log.info(
            "step %s: %d jobs (%d new, %d resubmitted, %d already known): %s .. %s",
            step.id,
            len(ids),
            len(done.new),
            len(done.restarted),
            len(done.kept),
            ids[0],
            ids[-1],
        )
        # Short steps finish here: a deferral that resumes within seconds can be failed by a
        # stale executor event (Airflow 3.3 issues #71580 and #72716).
        event = wait_inline(settings, ids, settings.airflow.inline_wait_s)
        if event is not None:
            return self.execute_complete(context, event)
        self.defer(
            trigger=BlazeJobsTrigger(
                job_ids=ids, namespace=settings.namespace, timeout_s=step.timeout_s
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=step.timeout_s + 120),
        )

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> Any:
        event = event or {}
        settings = _settings(context)
        ctx = self._context(context, settings)
        step = ctx.template.step(self.step_id)
        if event.get("status") == "timeout":
            pending = event.get("pending", [])
            raise AirflowException(
                f"step {step.id}: {event.get('pending_count')} of {event.get('total')} jobs "
                f"not finished after {event.get('timeout_s')} s: {' '.join(pending)}"
            )
        failed = event.get("failed", [])
        if failed:
            for job_id, state, reason in failed:
                log.error("step %s: job %s %s: %s", step.id, job_id, state, reason)
            first = "; ".join(f"{j} {s}: {r}" for j, s, r in failed[:5])
            raise AirflowException(
                f"step {step.id}: {event.get('failed_count')} of {event.get('total')} jobs did "
                f"not succeed: {first}"
            )
        ids: list[str] = event.get("job_ids", [])
        with Client(settings) as client:
            raw = read_results(settings, client.result_store, client.status_store, ids)
        missing = [j for j in ids if raw.get(j) is None]
        if missing:
            raise AirflowException(f"step {step.id}: no result for {' '.join(missing[:10])}")
        results = [parse_result(raw[j] or b"") for j in ids]
        log.info("step %s: %d jobs succeeded", step.id, len(results))
        return job_outputs(step, results)


def _event(job_ids: list[str], ended: dict[str, tuple[str, str]]) -> dict[str, Any]:
    failed = [[j, s, r] for j, (s, r) in ended.items() if s != JobState.SUCCEEDED.value]
    return {
        "status": "done",
        "job_ids": job_ids,
        "total": len(job_ids),
        "failed_count": len(failed),
        "failed": failed[:50],
    }


def wait_inline(settings: BlazeSettings, job_ids: list[str], wait_s: float) -> Any:
    """Poll the jobs for up to ``wait_s`` in the task itself; the trigger's event if all ended."""
    deadline = time.monotonic() + wait_s
    with Client(settings) as client:
        while True:
            states = client.status_store.states(job_ids)
            if all(st is not None and st.terminal for st in states.values()):
                full = client.status(job_ids)
                ended = {j: (st.state.value, st.reason) for j, st in full.items() if st}
                return _event(job_ids, ended)
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.5)


class BlazeTransformOperator(_StepOperator):
    """Runs a built-in transform step."""

    ui_color = "#e8f4fa"

    def execute(self, context: Any) -> Any:
        settings = _settings(context)
        ctx = self._context(context, settings)
        step = ctx.template.step(self.step_id)
        with Client(settings) as client:
            try:
                return run_transform(ctx, step, client)
            except BlazeError as exc:
                raise AirflowException(str(exc)) from None


class BlazeBranchOperator(BaseBranchOperator):
    """A ``branch`` step: runs the chosen steps and skips the other targets."""

    ui_color = "#fff2cc"

    def __init__(self, *, template_path: str, step_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.template_path = template_path
        self.step_id = step_id

    def choose_branch(self, context: Any) -> Iterable[str]:
        ctx = run_context(self.template_path, self.step_id, context, _settings(context))
        step = ctx.template.step(self.step_id)
        assert isinstance(step, BranchStep)
        try:
            chosen = choose_branch(ctx, step)
        except BlazeError as exc:
            raise AirflowException(str(exc)) from None
        log.info("branch %s chose %s", step.id, chosen or "nothing")
        return chosen

    def execute(self, context: Any) -> Any:
        chosen = list(self.choose_branch(context))
        self.do_branch(context, chosen)
        return {"chosen": chosen}


class BlazeJobsTrigger(BaseTrigger):
    """Polls Redis (asynchronously, in the triggerer) until every job has ended."""

    def __init__(
        self,
        job_ids: list[str],
        namespace: str,
        timeout_s: float,
        poll_s: float = 1.0,
        started: float | None = None,
        min_fire_s: float = 5.0,
    ) -> None:
        super().__init__()
        self.min_fire_s = min_fire_s
        self.job_ids = job_ids
        self.namespace = namespace
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self.started = started if started is not None else time.time()

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "job_ids": self.job_ids,
                "namespace": self.namespace,
                "timeout_s": self.timeout_s,
                "poll_s": self.poll_s,
                "started": self.started,
                "min_fire_s": self.min_fire_s,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        settings = load_settings(namespace=self.namespace)
        client = async_status_client(settings)
        ended: dict[str, tuple[str, str]] = {}
        pending = list(self.job_ids)
        try:
            while True:
                for start in range(0, len(pending), 1000):
                    chunk = pending[start : start + 1000]
                    pipe = client.pipeline(transaction=False)
                    for job_id in chunk:
                        pipe.hmget(job_key(settings.namespace, job_id), "state", "reason")
                    for job_id, (state, reason) in zip(chunk, await pipe.execute(), strict=True):
                        if state is not None and JobState(state.decode()).terminal:
                            ended[job_id] = (state.decode(), (reason or b"").decode())
                pending = [j for j in pending if j not in ended]
                # Not before min_fire_s: a resume racing the scheduler's stale event for the
                # deferring attempt gets the task failed (Airflow 3.3 issue #72716).
                if not pending and time.time() - self.started >= self.min_fire_s:
                    yield TriggerEvent(_event(self.job_ids, ended))
                    return
                if time.time() - self.started > self.timeout_s:
                    yield TriggerEvent(
                        {
                            "status": "timeout",
                            "total": len(self.job_ids),
                            "pending_count": len(pending),
                            "pending": pending[:20],
                            "timeout_s": self.timeout_s,
                        }
                    )
                    return
                await asyncio.sleep(self.poll_s)
        finally:
            await client.aclose()


def operator_for(kind: str) -> type[BaseOperator]:
    if kind == "branch":
        return BlazeBranchOperator
    if kind in ("llm", "diffusion", "embed"):
        return BlazeJobsOperator
    return BlazeTransformOperator
