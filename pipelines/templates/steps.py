"""Running template steps, without Airflow: jobs to submit, outputs to collect, transforms.

Airflow operators (``pipelines.templates.operators``) call these; so can tests and other schedulers.
Job ids are derived from the template, the run and the step, so a retried task resubmits the
same ids and finds the jobs that already finished instead of running them again.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipelines.client import Client
from pipelines.errors import BlazeError, InvalidJob
from pipelines.jobs import AnyJob, validate_job
from pipelines.openai.outputs import success_line
from pipelines.openai.requests import ENDPOINTS
from pipelines.results import AnyResult, DiffusionResult, EmbedResult, LLMResult, parse_result
from pipelines.stores.batch_results import read_results
from pipelines.templates.expressions import ExpressionError, evaluate, parse, text_template
from pipelines.templates.spec import (
    AnyStep,
    BranchStep,
    ContactSheetStep,
    DiffusionStep,
    EmbedStep,
    FilterStep,
    FormatStep,
    LLMStep,
    OpenAIOutputStep,
    ReadJsonlStep,
    ReportStep,
    SplitLinesStep,
    Template,
)

MAX_FANOUT = 10_000


class StepError(BlazeError):
    """A step could not run; the message names the template, step and why."""


@dataclass
class RunContext:
    """What a step sees: the run's parameters and the outputs of the steps before it."""

    template: Template
    run_id: str
    params: dict[str, Any]
    outputs: dict[str, Any] = field(default_factory=dict)
    namespace: str = "blaze"

    @property
    def run_key(self) -> str:
        """The run id made safe for job ids and bucket keys."""
        slug = re.sub(r"[^A-Za-z0-9_-]+", "-", self.run_id).strip("-")[:32]
        digest = hashlib.sha256(self.run_id.encode()).hexdigest()[:8]
        return f"{slug}-{digest}" if slug else digest

    def scope(self, item: Any = None, index: int | None = None) -> dict[str, Any]:
        scope: dict[str, Any] = {
            "params": self.params,
            "steps": self.outputs,
            "run": {
                "id": self.run_key,
                "template": self.template.name,
                "namespace": self.namespace,
            },
        }
        if index is not None:
            scope["item"], scope["index"] = item, index
        return scope

    def fail(self, step: AnyStep, what: str) -> StepError:
        return StepError(f"template {self.template.name!r}, step {step.id!r}: {what}")

    def expr(self, step: AnyStep, name: str, source: str, **scope: Any) -> Any:
        try:
            return evaluate(parse(source), self.scope(**scope))
        except ExpressionError as exc:
            raise self.fail(step, f"{name}: {exc}") from None

    def text(self, step: AnyStep, name: str, source: str, **scope: Any) -> str:
        try:
            return text_template(source).render(self.scope(**scope))
        except ExpressionError as exc:
            raise self.fail(step, f"{name}: {exc}") from None

    def number(self, step: AnyStep, name: str, value: Any, **scope: Any) -> Any:
        return self.expr(step, name, value, **scope) if isinstance(value, str) else value

    def items(self, step: AnyStep, source: str | None) -> list[Any]:
        if source is None:
            return [None]
        items = self.expr(step, "foreach", source)
        if not isinstance(items, list):
            raise self.fail(step, f"foreach must give a list, got {type(items).__name__}")
        if len(items) > MAX_FANOUT:
            raise self.fail(step, f"foreach gave {len(items)} items (at most {MAX_FANOUT})")
        return items


def job_ids(ctx: RunContext, step: AnyStep, count: int) -> list[str]:
    return [f"{ctx.template.name}-{step.id}-{ctx.run_key}-{i}" for i in range(count)]


def build_jobs(ctx: RunContext, step: LLMStep | DiffusionStep | EmbedStep) -> list[AnyJob]:
    """One job per ``foreach`` item (or one job); ``StepError`` names the item that is invalid."""
    items = ctx.items(step, step.foreach)
    ids = job_ids(ctx, step, len(items))
    per_item = step.foreach is not None
    jobs: list[AnyJob] = []
    for index, (item, job_id) in enumerate(zip(items, ids, strict=True)):
        scope: dict[str, Any] = {"item": item, "index": index} if per_item else {}
        fields: dict[str, Any] = {
            "job_id": job_id,
            "model": ctx.text(step, "model", step.model),
            "tags": {"template": ctx.template.name, "step": step.id, "run": ctx.run_key},
        }
        if isinstance(step, LLMStep):
            prompt = ctx.text(step, "prompt", step.prompt, **scope)
            if step.system is not None:
                system = ctx.text(step, "system", step.system, **scope)
                fields["messages"] = [
                    {"role": "system", "content": system},
                    {"role": "user", "content": prompt},
                ]
            else:
                fields["messages"] = [{"role": "user", "content": prompt}]
            fields["max_new_tokens"] = ctx.number(step, "max_tokens", step.max_tokens, **scope)
            fields["temperature"] = ctx.number(step, "temperature", step.temperature, **scope)
            seed = ctx.number(step, "seed", step.seed, **scope)
            if seed is not None:
                fields["seed"] = int(seed) + index
            kind = "llm"
        elif isinstance(step, DiffusionStep):
            fields["prompt"] = ctx.text(step, "prompt", step.prompt, **scope)
            if step.negative_prompt:
                fields["negative_prompt"] = ctx.text(step, "negative_prompt", step.negative_prompt)
            for name, target in (
                ("width", "width"),
                ("height", "height"),
                ("steps", "num_inference_steps"),
                ("guidance_scale", "guidance_scale"),
                ("num_images", "num_images"),
            ):
                fields[target] = ctx.number(step, name, getattr(step, name), **scope)
            seed = ctx.number(step, "seed", step.seed, **scope)
            if seed is not None:
                fields["seed"] = int(seed) + 16 * index
            kind = "diffusion"
        else:
            fields["texts"] = [ctx.text(step, "text", step.text, **scope)]
            kind = "embed"
        try:
            jobs.append(validate_job(fields, kind))
        except InvalidJob as exc:
            where = f"item {index}" if per_item else "its job"
            raise ctx.fail(step, f"{where} is not a valid {kind} job: {exc}") from None
    return jobs


def job_outputs(step: AnyStep, results: Sequence[AnyResult]) -> dict[str, Any]:
    """The step's output from its jobs' results (in job order)."""
    ids = [r.job_id for r in results]
    if step.kind == "llm":
        texts = [r.text or "" if isinstance(r, LLMResult) else "" for r in results]
        return {"job_ids": ids, "texts": texts, "text": texts[0] if texts else ""}
    if step.kind == "diffusion":
        images = [
            [im.key for im in r.images] if isinstance(r, DiffusionResult) else [] for r in results
        ]
        return {"job_ids": ids, "images": images, "all_images": [k for ks in images for k in ks]}
    vectors = [r.vectors[0] if isinstance(r, EmbedResult) and r.vectors else [] for r in results]
    return {"job_ids": ids, "vectors": vectors}


def run_transform(ctx: RunContext, step: AnyStep, client: Client) -> dict[str, Any]:
    """Run a built-in transform step and return its output."""
    store = client.result_store
    if isinstance(step, ReadJsonlStep):
        key = ctx.text(step, "key", step.key)
        raw = store.get(key)
        if raw is None:
            raise ctx.fail(step, f"no object {key!r} in bucket {client.settings.s3.bucket}")
        rows: list[Any] = []
        for n, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                raise ctx.fail(step, f"{key}:{n} is not valid JSON") from None
            rows.append({"text": row} if isinstance(row, str) else row)
            if len(rows) > step.max_rows:
                raise ctx.fail(step, f"{key} has more than {step.max_rows} rows")
        return {"rows": rows, "key": key}
    if isinstance(step, SplitLinesStep):
        text = ctx.text(step, "text", step.text)
        lines = [re.sub(r"^\s*(?:[-*•]|\d+[.)])\s*", "", ln).strip() for ln in text.splitlines()]
        lines = [ln for ln in lines if ln]
        return {"lines": lines[: step.max_items] if step.max_items else lines}
    if isinstance(step, FormatStep):
        if step.foreach is None:
            text = ctx.text(step, "template", step.template)
            return {"texts": [text], "text": text}
        items = ctx.items(step, step.foreach)
        texts = [
            ctx.text(step, "template", step.template, item=it, index=i)
            for i, it in enumerate(items)
        ]
        return {"texts": texts, "text": texts[0] if texts else ""}
    if isinstance(step, FilterStep):
        out: dict[str, list[Any]] = {
            "passed": [],
            "rejected": [],
            "passed_index": [],
            "rejected_index": [],
        }
        for i, item in enumerate(ctx.items(step, step.foreach)):
            side = "passed" if ctx.expr(step, "keep", step.keep, item=item, index=i) else "rejected"
            out[side].append(item)
            out[side + "_index"].append(i)
        return out
    if isinstance(step, ReportStep):
        key = ctx.text(step, "key", step.key)
        doc = {name: ctx.expr(step, f"fields.{name}", src) for name, src in step.fields.items()}
        doc["_run"] = {"template": ctx.template.name, "run_id": ctx.run_id, "step": step.id}
        body = json.dumps(doc, indent=1, default=str).encode()
        store.put_many([(key, body, "application/json")])
        return {"key": key}
    if isinstance(step, ContactSheetStep):
        return _contact_sheet(ctx, step, client)
    if isinstance(step, OpenAIOutputStep):
        return _openai_output(ctx, step, client)
    raise ctx.fail(step, f"{step.kind} is not a transform")


def choose_branch(ctx: RunContext, step: BranchStep) -> list[str]:
    """The steps to run next: those of every case that holds, else ``otherwise``."""
    chosen: list[str] = []
    for k, case in enumerate(step.cases):
        if ctx.expr(step, f"cases[{k}].when", case.when):
            chosen += [s for s in case.then if s not in chosen]
    return chosen or list(step.otherwise)


def _contact_sheet(ctx: RunContext, step: ContactSheetStep, client: Client) -> dict[str, Any]:
    from PIL import Image

    keys = ctx.expr(step, "images", step.images)
    if not isinstance(keys, list) or not keys:
        raise ctx.fail(step, "images must give a non-empty list of image keys")
    blobs = client.result_store.get_many([str(k) for k in keys])
    missing = [k for k, v in blobs.items() if v is None]
    if missing:
        raise ctx.fail(step, f"{len(missing)} images are not in the bucket, e.g. {missing[0]}")
    cols = min(step.columns, len(keys))
    rows = (len(keys) + cols - 1) // cols
    size = step.thumb
    sheet = Image.new("RGB", (cols * size, rows * size), "white")
    for i, key in enumerate(keys):
        data = blobs[str(key)]
        assert data is not None
        with Image.open(io.BytesIO(data)) as im:
            thumb = im.convert("RGB")
            thumb.thumbnail((size, size))
            sheet.paste(thumb, ((i % cols) * size, (i // cols) * size))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    key = ctx.text(step, "key", step.key)
    client.result_store.put_many([(key, buf.getvalue(), "image/png")])
    return {"key": key, "count": len(keys)}


def _openai_output(ctx: RunContext, step: OpenAIOutputStep, client: Client) -> dict[str, Any]:
    source = ctx.outputs.get(step.source)
    if not isinstance(source, Mapping) or "job_ids" not in source:
        raise ctx.fail(step, f"step {step.source!r} has no jobs to report")
    ids: list[str] = list(source["job_ids"])
    items = ctx.items(step, step.foreach) if step.foreach else list(range(len(ids)))
    if len(items) != len(ids):
        raise ctx.fail(step, f"foreach gave {len(items)} items for {len(ids)} jobs")
    raw = read_results(client.settings, client.result_store, client.status_store, ids)
    url = {v: k for k, v in ENDPOINTS.items() if k != "/v1/completions"}[
        ctx.template.step(step.source).kind
    ]
    bucket = client.settings.s3.bucket
    lines = []
    for i, (job_id, item) in enumerate(zip(ids, items, strict=True)):
        custom_id = str(ctx.expr(step, "custom_id", step.custom_id, item=item, index=i))
        data = raw.get(job_id)
        doc = parse_result(data) if data is not None else None
        if doc is not None and doc.status == "succeeded":
            lines.append(success_line(f"batch_req_{job_id}", custom_id, url, doc, bucket))
        else:
            why = doc.error if doc is not None else "no result"
            lines.append(
                {
                    "id": f"batch_req_{job_id}",
                    "custom_id": custom_id,
                    "response": None,
                    "error": {"code": "server_error", "message": why},
                }
            )
    key = ctx.text(step, "key", step.key)
    data_out = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    client.result_store.put_stream(key, io.BytesIO(data_out), "application/jsonl")
    return {"key": key, "lines": len(lines)}
