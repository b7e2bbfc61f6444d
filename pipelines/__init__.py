"""Blaze's base package: job and result schemas, settings, storage, status, the SDK and CLI.

Importing it never pulls in torch, Kafka consumers or Airflow.
"""

from pipelines.client import Client, JobHandle
from pipelines.jobs import ChatMessage, LLMJob
from pipelines.results import LLMResult
from pipelines.settings import BlazeSettings, load_settings

__all__ = [
    "BlazeSettings",
    "ChatMessage",
    "Client",
    "JobHandle",
    "LLMJob",
    "LLMResult",
    "load_settings",
]
