"""The SDK client as users get it: the base ``Client`` wired to the OpenAI batch layer.

A ``cancel`` that settles the last job of an OpenAI-style batch writes the batch's output
files at once (otherwise the batch's next ``status``/``wait``/``download`` would).
"""

from __future__ import annotations

from typing import Any

from pipelines import client
from pipelines.openai.service import BatchService, finalize_groups
from pipelines.settings import BlazeSettings, load_settings


class Client(client.Client):
    """Blaze from a producer's side (see ``pipelines.client.Client``).

    Args:
        settings: Where Kafka, Redis and S3 are; default: read from ``BLAZE_*`` variables.
        **stores: ``status_store`` and ``result_store`` to use instead of the real ones.
    """

    def __init__(self, settings: BlazeSettings | None = None, **stores: Any) -> None:
        super().__init__(settings or load_settings(), **stores)
        self.on_groups_done = self._finalize

    def _finalize(self, groups: set[str]) -> None:
        finalize_groups(self.batches())(groups)

    def batches(self) -> BatchService:
        """OpenAI-style batches submitted, tracked and cancelled through this client."""
        return BatchService.of(self)
