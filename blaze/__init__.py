"""Blaze: queue-driven batch inference. The front door and the one composition root.

The SDK's public names are importable from here (``from blaze import Client, LLMJob``); they
load on first use, so ``import blaze`` (as the command line does) stays light. ``blaze.cli``
is the command line; nothing in ``pipelines``, ``consumers``, ``engines``, ``dags`` or
``infra`` imports this package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from blaze.sdk import Client
    from pipelines.client import JobHandle
    from pipelines.errors import BlazeError, ConfigError, InvalidJob, JobTimeout, ServiceUnavailable
    from pipelines.jobs import ChatMessage, DiffusionJob, EmbedJob, LLMJob
    from pipelines.openai.service import BatchInfo, BatchService
    from pipelines.results import DiffusionResult, EmbedResult, LLMResult
    from pipelines.settings import BlazeSettings, load_settings
    from pipelines.stores.status import JobState, JobStatus

_WHERE = {
    "Client": "blaze.sdk",
    "JobHandle": "pipelines.client",
    "BlazeError": "pipelines.errors",
    "ConfigError": "pipelines.errors",
    "InvalidJob": "pipelines.errors",
    "JobTimeout": "pipelines.errors",
    "ServiceUnavailable": "pipelines.errors",
    "ChatMessage": "pipelines.jobs",
    "DiffusionJob": "pipelines.jobs",
    "EmbedJob": "pipelines.jobs",
    "LLMJob": "pipelines.jobs",
    "BatchInfo": "pipelines.openai.service",
    "BatchService": "pipelines.openai.service",
    "DiffusionResult": "pipelines.results",
    "EmbedResult": "pipelines.results",
    "LLMResult": "pipelines.results",
    "BlazeSettings": "pipelines.settings",
    "load_settings": "pipelines.settings",
    "JobState": "pipelines.stores.status",
    "JobStatus": "pipelines.stores.status",
}

__all__ = [
    "BatchInfo",
    "BatchService",
    "BlazeError",
    "BlazeSettings",
    "ChatMessage",
    "Client",
    "ConfigError",
    "DiffusionJob",
    "DiffusionResult",
    "EmbedJob",
    "EmbedResult",
    "InvalidJob",
    "JobHandle",
    "JobState",
    "JobStatus",
    "JobTimeout",
    "LLMJob",
    "LLMResult",
    "ServiceUnavailable",
    "load_settings",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'blaze' has no attribute {name!r}")
