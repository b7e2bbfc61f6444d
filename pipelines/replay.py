"""Replaying dead letters after a fix: ``--set key=value`` changes applied to a letter's job."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pipelines.errors import ConfigError
from pipelines.jobs import JOB_MODELS, AnyJob, validate_job
from pipelines.stores.deadletters import Letter


def parse_assignments(pairs: Sequence[str]) -> dict[str, Any]:
    """``key=value`` pairs for ``--set``; values are JSON when they parse, else strings."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


def fixed_job(letter: Letter, changes: dict[str, Any]) -> AnyJob:
    """The letter's job with ``changes`` applied, validated; ``ConfigError`` says why not."""
    payload = letter.body.get("payload") or ""
    try:
        data = json.loads(payload)
    except ValueError:
        raise ConfigError(
            f"dead letter {letter.ref}: its payload is not JSON (or was truncated); cannot replay"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"dead letter {letter.ref}: its payload is not a JSON object")
    source = letter.body.get("source") or {}
    kind = str(data.get("kind") or str(source.get("topic", "")).rsplit(".", 1)[-1] or "llm")
    if kind not in JOB_MODELS:
        raise ConfigError(f"dead letter {letter.ref}: unknown job kind {kind!r}")
    data.update(changes)
    try:
        return validate_job(data, kind)
    except Exception as exc:
        raise ConfigError(f"dead letter {letter.ref}: still invalid after the fix: {exc}") from None
