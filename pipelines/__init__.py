"""Blaze's base package: job and result schemas, settings, storage, status, the SDK and CLI.

Importing it never pulls in torch, Kafka consumers or Airflow; the names below load on first
use, so ``import pipelines.jobs`` (as engines do) does not import the Kafka, Redis and S3
clients either.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipelines.client import Client, JobHandle
    from pipelines.jobs import ChatMessage, DiffusionJob, EmbedJob, LLMJob
    from pipelines.openai_batch import BatchService
    from pipelines.results import DiffusionResult, EmbedResult, LLMResult
    from pipelines.settings import BlazeSettings, load_settings
    from pipelines.status import JobState, JobStatus

_WHERE = {
    "Client": "pipelines.client",
    "JobHandle": "pipelines.client",
    "ChatMessage": "pipelines.jobs",
    "DiffusionJob": "pipelines.jobs",
    "LLMJob": "pipelines.jobs",
    "EmbedJob": "pipelines.jobs",
    "BatchService": "pipelines.openai_batch",
    "DiffusionResult": "pipelines.results",
    "EmbedResult": "pipelines.results",
    "LLMResult": "pipelines.results",
    "JobState": "pipelines.status",
    "JobStatus": "pipelines.status",
    "BlazeSettings": "pipelines.settings",
    "load_settings": "pipelines.settings",
}

__all__ = [
    "BatchService",
    "BlazeSettings",
    "ChatMessage",
    "Client",
    "DiffusionJob",
    "DiffusionResult",
    "EmbedJob",
    "EmbedResult",
    "JobHandle",
    "JobState",
    "JobStatus",
    "LLMJob",
    "LLMResult",
    "load_settings",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'pipelines' has no attribute {name!r}")
