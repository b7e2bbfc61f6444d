"""Reading the dead-letter topic and replaying chosen letters after a fix."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from pipelines.errors import ConfigError
from pipelines.jobs import JOB_MODELS, AnyJob, validate_job
from pipelines.kafka import unavailable
from pipelines.settings import BlazeSettings


@dataclass(frozen=True)
class Letter:
    """One record of the dead-letter topic, with its place in it (``partition:offset``)."""

    partition: int
    offset: int
    body: dict[str, Any]

    @property
    def ref(self) -> str:
        return f"{self.partition}:{self.offset}"


def read_letters(
    settings: BlazeSettings, idle_s: float = 2.0, limit: int | None = None
) -> list[Letter]:
    """Every dead letter from the start of the topic (no consumer group, nothing committed).

    Reads until the topic stays quiet for ``idle_s``: end offsets are not trusted, as some
    brokers (Tansu) under-report them.
    """
    topic = settings.dead_letter_topic
    try:
        consumer = KafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap,
            enable_auto_commit=False,
            group_id=None,
            **settings.kafka.client_config(),
        )
    except KafkaError as exc:
        raise unavailable(settings, exc) from None
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return []
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out: list[Letter] = []
        quiet_until = time.monotonic() + idle_s
        while time.monotonic() < quiet_until:
            batch = consumer.poll(timeout_ms=200)
            for recs in batch.values():
                for r in recs:
                    try:
                        body = json.loads(r.value)
                    except ValueError:
                        body = {
                            "reason": "unreadable dead letter",
                            "payload": r.value[:200].decode(errors="replace"),
                        }
                    out.append(Letter(r.partition, r.offset, body))
                quiet_until = time.monotonic() + idle_s
            if limit is not None and len(out) >= limit:
                break
        out.sort(key=lambda x: (x.body.get("at") or "", x.partition, x.offset))
        return out[:limit] if limit is not None else out
    finally:
        consumer.close()


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
