"""Pipeline templates: YAML files that describe reusable, conditional, parameterised pipelines.

A template names typed parameters (with defaults) and a list of steps. Steps run Blaze jobs
(``llm``, ``diffusion``, ``embed``; with ``foreach`` one job per item of a list, submitted as one
batch) or small built-in transforms (``read_jsonl``, ``split_lines``, ``format``, ``filter``,
``report``, ``contact_sheet``, ``openai_output``); a ``branch`` step picks which steps run next
from earlier outputs. Each step runs after the steps in ``after`` (default: the step before it)
under an explicit Airflow ``trigger_rule``. Conditions and text fields use the safe expression
language of ``pipelines.templates.expressions`` (never ``eval``).

``load_template`` validates everything up front and raises ``TemplateError`` naming the file,
the step and the field: an unknown step kind, an undeclared parameter, a reference to a step
that does not exist or does not run before, an output field the step does not have, an
expression that is not allowed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from pipelines.errors import ConfigError
from pipelines.templates.expressions import (
    ExpressionError,
    Reference,
    parse,
    references,
    text_template,
)

SHIPPED_DIR = Path(__file__).parent / "shipped"
StepId = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
TemplateName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
ParamName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
TriggerRule = Literal[
    "all_success",
    "all_done",
    "none_failed",
    "none_failed_min_one_success",
    "one_success",
    "one_failed",
    "all_failed",
]


class TemplateError(ConfigError):
    """A template that cannot be used; the message names the file, step and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ParamSpec(_Strict):
    """A parameter: its JSON type, its default (none means required) and what it is for."""

    type: Literal["string", "integer", "number", "boolean", "array", "object"] = "string"
    default: Any = None
    description: str = ""

    @property
    def required(self) -> bool:
        return self.default is None


class _Step(_Strict):
    id: StepId
    after: list[StepId] | None = None
    trigger_rule: TriggerRule = "all_success"
    description: str = ""


Num = int | float | str
"""A number, or an expression that gives one (e.g. ``params.max_tokens``)."""


class _JobStep(_Step):
    model: str
    foreach: str | None = None
    timeout_s: float = Field(default=3600, gt=0, le=7 * 86400)


class LLMStep(_JobStep):
    """One LLM job (or one per ``foreach`` item); output ``texts``, ``text``, ``job_ids``."""

    kind: Literal["llm"]
    prompt: str
    system: str | None = None
    max_tokens: Num = 64
    temperature: Num = 0.0
    seed: Num | None = None


class DiffusionStep(_JobStep):
    """Text-to-image jobs; output ``images`` (keys per job), ``all_images``, ``job_ids``."""

    kind: Literal["diffusion"]
    prompt: str
    negative_prompt: str | None = None
    width: Num = 512
    height: Num = 512
    steps: Num = 30
    guidance_scale: Num = 7.5
    num_images: Num = 1
    seed: Num | None = None


class EmbedStep(_JobStep):
    """Embedding jobs, one text per job; output ``vectors``, ``job_ids``."""

    kind: Literal["embed"]
    text: str


class ReadJsonlStep(_Step):
    """Rows of a JSONL object in the bucket; output ``rows``, ``key``."""

    kind: Literal["read_jsonl"]
    key: str
    max_rows: int = Field(default=50_000, ge=1, le=1_000_000)


class SplitLinesStep(_Step):
    """Non-empty lines of a text (list numbering removed); output ``lines``."""

    kind: Literal["split_lines"]
    text: str
    max_items: int | None = Field(default=None, ge=1)


class FormatStep(_Step):
    """A text from a template (one per ``foreach`` item); output ``texts``, ``text``."""

    kind: Literal["format"]
    template: str
    foreach: str | None = None


class FilterStep(_Step):
    """Split a list by a condition on each ``item``; output ``passed``, ``rejected`` and
    their positions ``passed_index``, ``rejected_index``."""

    kind: Literal["filter"]
    foreach: str
    keep: str


class Case(_Strict):
    when: str
    then: list[StepId] = Field(min_length=1)


class BranchStep(_Step):
    """Runs the steps of every case whose condition holds (else ``otherwise``); skips the
    other targets. Output ``chosen``."""

    kind: Literal["branch"]
    cases: list[Case] = Field(min_length=1)
    otherwise: list[StepId] = []


class ReportStep(_Step):
    """A JSON document written to the bucket; output ``key``."""

    kind: Literal["report"]
    key: str
    fields: dict[str, str] = Field(min_length=1)


class ContactSheetStep(_Step):
    """One PNG grid of images from the bucket; output ``key``, ``count``."""

    kind: Literal["contact_sheet"]
    images: str
    key: str
    columns: int = Field(default=4, ge=1, le=32)
    thumb: int = Field(default=128, ge=16, le=1024)


class OpenAIOutputStep(_Step):
    """An OpenAI Batch style output file of a job step, one line per job; ``custom_id`` is
    evaluated per item of ``foreach`` (the list the source step ran over). Output ``key``,
    ``lines``."""

    kind: Literal["openai_output"]
    source: StepId
    key: str
    foreach: str | None = None
    custom_id: str = "str(index)"


AnyStep = (
    LLMStep
    | DiffusionStep
    | EmbedStep
    | ReadJsonlStep
    | SplitLinesStep
    | FormatStep
    | FilterStep
    | BranchStep
    | ReportStep
    | ContactSheetStep
    | OpenAIOutputStep
)
Step = Annotated[AnyStep, Field(discriminator="kind")]
JOB_STEPS = ("llm", "diffusion", "embed")
OUTPUT_FIELDS: dict[str, tuple[str, ...]] = {
    "llm": ("texts", "text", "job_ids"),
    "diffusion": ("images", "all_images", "job_ids"),
    "embed": ("vectors", "job_ids"),
    "read_jsonl": ("rows", "key"),
    "split_lines": ("lines",),
    "format": ("texts", "text"),
    "filter": ("passed", "rejected", "passed_index", "rejected_index"),
    "branch": ("chosen",),
    "report": ("key",),
    "contact_sheet": ("key", "count"),
    "openai_output": ("key", "lines"),
}
# Which fields hold expressions and which hold texts with {placeholders}; per-item fields may
# use ``item`` and ``index``.
EXPRESSION_FIELDS = ("foreach", "keep", "images", "custom_id")
NUMBER_FIELDS = (
    "max_tokens",
    "temperature",
    "seed",
    "width",
    "height",
    "steps",
    "guidance_scale",
    "num_images",
)
TEXT_FIELDS = ("model", "prompt", "system", "negative_prompt", "text", "template", "key")
PER_ITEM_FIELDS = ("prompt", "system", "negative_prompt", "text", "template", "keep", "custom_id")


class Template(_Strict):
    """A validated pipeline template."""

    name: TemplateName
    description: str = ""
    params: dict[
        Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")], ParamSpec
    ] = {}
    steps: list[Step] = Field(min_length=1)

    def step(self, step_id: str) -> AnyStep:
        return next(s for s in self.steps if s.id == step_id)

    def upstream(self, step: AnyStep) -> list[str]:
        """The steps this one runs after (explicit ``after`` or the step before it)."""
        if step.after is not None:
            return list(step.after)
        pos = [s.id for s in self.steps].index(step.id)
        return [self.steps[pos - 1].id] if pos else []

    def ancestors(self, step: AnyStep) -> set[str]:
        seen: set[str] = set()
        todo = self.upstream(step)
        while todo:
            sid = todo.pop()
            if sid not in seen:
                seen.add(sid)
                todo.extend(self.upstream(self.step(sid)))
        return seen


_TYPE_TAGS = {"int", "float", "str", "bool", "none", "list", "dict"}


def _where(source: str, step: str | None, field: str | None) -> str:
    parts = [source]
    if step:
        parts.append(f"step {step!r}")
    if field:
        parts.append(f"field {field!r}")
    return ", ".join(parts)


def _pydantic_error(source: str, raw: Mapping[str, Any], exc: ValidationError) -> TemplateError:
    err = exc.errors(include_input=False, include_url=False)[0]
    loc = list(err["loc"])
    step_id = None
    if loc[:1] == ["steps"] and len(loc) > 1 and isinstance(loc[1], int):
        steps = raw.get("steps") or []
        step = steps[loc[1]] if loc[1] < len(steps) else None
        step_id = (
            str(step.get("id")) if isinstance(step, dict) and step.get("id") else f"#{loc[1] + 1}"
        )
        loc = loc[2:]
        if loc and loc[0] in OUTPUT_FIELDS:
            loc = loc[1:]  # the union tag pydantic puts in the path
    msg = err["msg"]
    loc = [p for p in loc if not (isinstance(p, str) and (p in _TYPE_TAGS or "[" in p))]
    if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
        kind = step.get("kind") if step_id and isinstance(step, dict) else None
        loc, msg = ["kind"], f"unknown step kind {kind!r} (known: {', '.join(OUTPUT_FIELDS)})"
    field = ".".join(str(p) for p in loc) or None
    return TemplateError(f"{_where(source, step_id, field)}: {msg}")


def parse_template(raw: Any, source: str) -> Template:
    """Validate a template given as data; ``TemplateError`` names file, step and field."""
    if not isinstance(raw, dict):
        raise TemplateError(f"{source}: a template is a mapping with name, params and steps")
    try:
        template = Template.model_validate(raw)
    except ValidationError as exc:
        raise _pydantic_error(source, raw, exc) from None
    _check(template, source)
    return template


def load_template(path: Path) -> Template:
    """Read and validate one template file."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TemplateError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise TemplateError(f"{path}: not valid YAML: {exc}") from None
    return parse_template(raw, str(path))


def template_files(extra_dir: Path | None = None) -> list[Path]:
    """The shipped templates plus ``*.yaml`` in ``extra_dir`` (a user's override wins by name)."""
    found = {p.stem: p for p in sorted(SHIPPED_DIR.glob("*.yaml"))}
    if extra_dir is not None and extra_dir.is_dir():
        found.update({p.stem: p for p in sorted(extra_dir.glob("*.y*ml"))})
    return list(found.values())


def invalid_templates(extra_dir: Path | None = None) -> list[str]:
    """The problem of every template file that does not validate (one line each)."""
    problems = []
    for path in template_files(extra_dir):
        try:
            load_template(path)
        except TemplateError as exc:
            problems.append(str(exc))
    return problems


def _check(t: Template, source: str) -> None:
    ids = [s.id for s in t.steps]
    kinds = {s.id: s.kind for s in t.steps}
    for dup in {i for i in ids if ids.count(i) > 1}:
        raise TemplateError(f"{_where(source, dup, 'id')}: the id is used twice")
    for pos, step in enumerate(t.steps):
        for up in step.after or []:
            if up not in kinds:
                raise TemplateError(f"{_where(source, step.id, 'after')}: unknown step {up!r}")
            if ids.index(up) >= pos:
                raise TemplateError(
                    f"{_where(source, step.id, 'after')}: step {up!r} must come before it"
                )
        if isinstance(step, BranchStep):
            targets = [(f"cases[{k}].then", s) for k, c in enumerate(step.cases) for s in c.then]
            targets += [("otherwise", s) for s in step.otherwise]
            for field, target in targets:
                if target not in kinds:
                    raise TemplateError(
                        f"{_where(source, step.id, field)}: unknown step {target!r}"
                    )
                if step.id not in t.upstream(t.step(target)):
                    raise TemplateError(
                        f"{_where(source, target, 'after')}: a target of branch "
                        f"{step.id!r} must list it in 'after'"
                    )
        if isinstance(step, OpenAIOutputStep) and kinds.get(step.source) not in JOB_STEPS:
            raise TemplateError(
                f"{_where(source, step.id, 'source')}: {step.source!r} is not a job step"
            )
        for field, refs in _expressions(step, source):
            for ref in refs:
                _check_ref(t, step, field, ref, source)


def _expressions(step: AnyStep, source: str) -> Iterable[tuple[str, list[Reference]]]:
    """Parse every expression and text field of a step; yields what each reads."""
    per_item = getattr(step, "foreach", None) is not None or isinstance(step, FilterStep)
    fields: list[tuple[str, str, bool]] = []
    for name in EXPRESSION_FIELDS:
        value = getattr(step, name, None)
        if isinstance(value, str):
            fields.append((name, value, True))
    for name in NUMBER_FIELDS:
        value = getattr(step, name, None)
        if isinstance(value, str):
            fields.append((name, value, True))
    for name in TEXT_FIELDS:
        value = getattr(step, name, None)
        if isinstance(value, str):
            fields.append((name, value, False))
    if isinstance(step, BranchStep):
        fields += [(f"cases[{k}].when", c.when, True) for k, c in enumerate(step.cases)]
    if isinstance(step, ReportStep):
        fields += [(f"fields.{k}", v, True) for k, v in step.fields.items()]
    for name, value, is_expression in fields:
        try:
            if is_expression:
                tree = parse(value)
                refs = references(tree)
                names = {n.id for n in _names(tree)}
            else:
                tt = text_template(value)
                refs = tt.references()
                names = {n.id for p in tt.parts if not isinstance(p, str) for n in _names(p)}
        except ExpressionError as exc:
            raise TemplateError(f"{_where(source, step.id, name)}: {exc}") from None
        item_ok = per_item and name.split(".")[0] in PER_ITEM_FIELDS
        if names & {"item", "index"} and not item_ok:
            raise TemplateError(
                f"{_where(source, step.id, name)}: 'item' and 'index' exist only in per-item "
                "fields of a step with 'foreach'"
            )
        yield name, refs


def _names(tree: Any) -> list[Any]:
    import ast

    return [n for n in ast.walk(tree) if isinstance(n, ast.Name)]


def _check_ref(t: Template, step: AnyStep, field: str, ref: Reference, source: str) -> None:
    where = _where(source, step.id, field)
    if ref.root == "params":
        if ref.name not in t.params:
            known = ", ".join(t.params) or "none"
            raise TemplateError(f"{where}: unknown parameter {ref.name!r} (declared: {known})")
        return
    if ref.name not in {s.id for s in t.steps}:
        raise TemplateError(f"{where}: unknown step {ref.name!r}")
    if ref.name not in t.ancestors(step):
        raise TemplateError(f"{where}: step {ref.name!r} does not run before {step.id!r}")
    kind = t.step(ref.name).kind
    if ref.field is not None and ref.field not in OUTPUT_FIELDS[kind]:
        raise TemplateError(
            f"{where}: a {kind} step has no output {ref.field!r} "
            f"(it has: {', '.join(OUTPUT_FIELDS[kind])})"
        )


def resolve_params(t: Template, given: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults plus the given values, each checked and coerced to its declared type."""
    unknown = sorted(set(given) - set(t.params))
    if unknown:
        raise TemplateError(
            f"template {t.name!r}: unknown parameter {unknown[0]!r} "
            f"(declared: {', '.join(t.params) or 'none'})"
        )
    out: dict[str, Any] = {}
    for name, spec in t.params.items():
        if name in given and given[name] is not None:
            out[name] = _coerce(t.name, name, spec, given[name])
        elif spec.required:
            raise TemplateError(f"template {t.name!r}: missing parameter {name!r} ({spec.type})")
        else:
            out[name] = spec.default
    return out


def _coerce(template: str, name: str, spec: ParamSpec, value: Any) -> Any:
    try:
        if spec.type == "string":
            return str(value)
        if spec.type == "integer":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if spec.type == "number":
            return float(value)
        if spec.type == "boolean":
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        parsed = json.loads(value) if isinstance(value, str) else value
        want = list if spec.type == "array" else dict
        if not isinstance(parsed, want):
            raise ValueError(value)
        return parsed
    except (TypeError, ValueError):
        raise TemplateError(
            f"template {template!r}: parameter {name!r} must be {spec.type}, got {value!r}"
        ) from None
