"""What ``blaze pipeline run`` puts into the bucket (``--input``) and reads back (outputs)."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.errors import ConfigError

if TYPE_CHECKING:
    from pipelines.settings import BlazeSettings
    from pipelines.templates.airflow_api import PipelineRun
    from pipelines.templates.spec import Template

INPUT_PARAM = "input_key"
PRESIGN_S = 3600


def input_params(template: Template, items: list[str]) -> dict[str, Path]:
    """``--input`` values by parameter: ``FILE`` fills ``input_key``, ``PARAM=FILE`` another.

    Each file must exist and hold one JSON value per line (checked here, so a bad line is
    named before anything runs)."""
    out: dict[str, Path] = {}
    for item in items:
        name, sep, file = item.partition("=")
        if not sep:
            name, file = INPUT_PARAM, item
        spec = template.params.get(name)
        if spec is None or spec.type != "string":
            takes = [n for n, p in template.params.items() if p.type == "string"]
            raise ConfigError(
                f"--input {item}: template {template.name!r} has no string parameter {name!r} "
                f"to put the file's bucket key in (string parameters: {', '.join(takes) or 'none'})"
            )
        if name in out:
            raise ConfigError(f"--input: {name} given twice")
        path = Path(file)
        if not path.is_file():
            raise ConfigError(f"--input {item}: no such file {str(path)!r}")
        _check_jsonl(path)
        out[name] = path
    return out


def _check_jsonl(path: Path) -> None:
    with path.open("rb") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                json.loads(line)
            except ValueError as exc:
                raise ConfigError(f"--input {path}:{n}: not valid JSON ({exc})") from None


def upload_inputs(settings: BlazeSettings, inputs: dict[str, Path]) -> dict[str, str]:
    """Put each file under ``{namespace}/inputs/{id}/{name}``; returns the parameters to pass."""
    from pipelines.stores import connect

    store = connect.result_store(settings)
    keys: dict[str, str] = {}
    try:
        store.ensure_bucket()
        for param, path in inputs.items():
            key = f"{settings.namespace}/inputs/{uuid.uuid4().hex[:12]}/{path.name}"
            with path.open("rb") as fh:
                store.put_stream(key, fh, "application/x-ndjson")
            keys[param] = key
    finally:
        store.close()
    return keys


def describe_steps(
    settings: BlazeSettings, run: PipelineRun, outputs: dict[str, Any]
) -> list[dict[str, Any]]:
    """Each step's state and what it produced: object keys with presigned URLs, job counts."""
    from pipelines.stores import connect

    store = status = None
    steps: list[dict[str, Any]] = []
    try:
        for task, state in run.tasks.items():
            step: dict[str, Any] = {"step": task, "state": state, "summary": ""}
            value = outputs.get(task)
            if isinstance(value, dict):
                parts = []
                if isinstance(value.get("job_ids"), list):
                    status = status or connect.status_store(settings)
                    ids = [str(j) for j in value["job_ids"]]
                    counts = Counter(
                        s.state.value if s else "unknown" for s in status.get(ids).values()
                    )
                    step["jobs"] = dict(counts)
                    parts.append(
                        f"{len(ids)} jobs: "
                        + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
                    )
                if isinstance(value.get("rows"), list):
                    step["rows"] = len(value["rows"])
                    parts.append(f"{len(value['rows'])} rows")
                if isinstance(value.get("key"), str):
                    store = store or connect.result_store(settings)
                    step["key"] = value["key"]
                    step["url"] = store.presign(value["key"], PRESIGN_S)
                    parts.append(value["key"])
                if "lines" in value and isinstance(value["lines"], int):
                    step["lines"] = value["lines"]
                    parts.append(f"{value['lines']} lines")
                if "chosen" in value:
                    step["chosen"] = value["chosen"]
                    parts.append(f"chose {value['chosen']}")
                step["summary"] = "; ".join(parts)
            steps.append(step)
    finally:
        if store is not None:
            store.close()
        if status is not None:
            status.close()
    return steps
