"""The embedding engine: a transformers encoder with mean pooling (sentence-transformers style).

All texts of all jobs in a batch go through the encoder together; each job gets its vectors
back in order, L2-normalised unless it asked otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModel, AutoTokenizer

from engines.base import Output, parameter_bytes, resolve_dtype, torch_dtype, weights_digest
from pipelines.errors import ModelUnavailable
from pipelines.jobs import EmbedJob

log = logging.getLogger(__name__)


class TransformersEmbedder:
    """Sentence embeddings by mean pooling over the last hidden state.

    Args:
        name: The model name jobs use.
        path: A folder with an encoder (``AutoModel``) and its tokenizer.
        dtype: Weight dtype as the registry names it (``auto`` is resolved for the device at
            load, ``engines.base.resolve_dtype``).
        max_tokens: Texts are truncated to this many tokens.
    """

    def __init__(
        self, name: str, path: Path, dtype: str = "float32", max_tokens: int = 256
    ) -> None:
        self.name = name
        self.path = Path(path)
        self.requested_dtype = dtype
        self.dtype = resolve_dtype(dtype, "cpu")  # resolved again at load, for its device
        self.max_tokens = max_tokens
        self.device = "cpu"
        self.model: Any = None
        self.tokenizer: Any = None
        self._digest = ""

    def load(self, device: str) -> None:
        self.dtype = resolve_dtype(self.requested_dtype, device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.path)
            model = AutoModel.from_pretrained(self.path, dtype=torch_dtype(self.dtype, self.name))
        except (OSError, ValueError) as exc:
            raise ModelUnavailable(
                f"model {self.name} failed to load from {self.path}: {exc}"
            ) from None
        self.model = model.to(device).eval()
        self.device = device
        self._digest = weights_digest(self.path)

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "engine": "embed",
            "weights": self._digest,
            "path": str(self.path),
            "dtype": self.dtype,
            "device": self.device,
        }

    def memory_bytes(self) -> int:
        if self.model is None:
            return 0
        return parameter_bytes(self.model)

    def run(self, batch: Sequence[EmbedJob]) -> list[Output]:
        if self.model is None:
            raise ModelUnavailable(f"model {self.name} is not loaded")
        texts = [t for job in batch for t in job.texts]
        enc = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
        ).to(self.device)
        with torch.inference_mode():
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            normed = torch.nn.functional.normalize(pooled, dim=-1)
        counts = enc["attention_mask"].sum(1).tolist()
        outs, at = [], 0
        for job in batch:
            n = len(job.texts)
            vecs = (normed if job.normalize else pooled)[at : at + n].float().cpu().tolist()
            outs.append(
                Output(
                    vectors=vecs, prompt_tokens=int(sum(counts[at : at + n])), finish_reason="stop"
                )
            )
            at += n
        return outs
