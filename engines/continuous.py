"""Continuous batching for the LLM engine: a row leaves the running batch the step it ends and
a waiting row takes its slot.

Static ``generate`` computes every row of a batch until its longest row ends, so with mixed
``max_new_tokens`` (and rows that stop at end-of-sequence) most steps run for rows that are
done, and a batch is as slow as its longest row. Here the engine keeps up to ``max_rows`` rows
in one running KV cache: each step decodes one token for every active row; a finished row is
dropped from the cache; waiting rows are prefilled together and joined to the cache
(left-padded to a common length, as a static batch is). Columns that are padding for every
row are trimmed as rows leave, so the cache stays as long as its longest live row.

Written here rather than taken from transformers' continuous batching manager
(``init_continuous_batching``): on this 2-core CPU, with the same 16 rows at once, the manager
was 1.03-1.06x a static batch (its paged attention and per-step scheduling cost as much as the
padding it saves) and, with its default cache sizing, zeroed gigabytes of memory before the
first token. Greedy rows only; the engine runs sampled rows and rows with stop strings on its
static path.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import torch
from transformers import DynamicCache


class ContinuousGenerator:
    """Greedy generation with a refilled running batch (see the module docstring).

    Args:
        model: A loaded causal LM whose cache is a ``DynamicCache`` of full-attention layers.
        eos: Token ids that end a row.
        max_rows: Rows computed together at most; more wait and take slots as rows finish.
        pad_id: The token id padding uses (never attended to).
    """

    def __init__(self, model: Any, eos: set[int], max_rows: int, pad_id: int = 0) -> None:
        self.model = model
        self.eos = eos
        self.max_rows = max_rows
        self.pad_id = pad_id
        self.device = next(model.parameters()).device

    def generate(
        self,
        rows: list[list[int]],
        limits: list[int],
        on_row: Callable[[int, list[int]], None] | None = None,
    ) -> list[list[int]]:
        """The new tokens of each row (its end-of-sequence token included when it stopped);
        ``on_row(i, tokens)`` hears of each row the step it ends."""
        out: list[list[int]] = [[] for _ in rows]

        def end(done: list[int]) -> None:
            if on_row is not None:
                for i in done:
                    on_row(i, out[i])
            run.drop(done)

        waiting = deque(range(len(rows)))
        run = _Running(self)
        with torch.inference_mode():
            while waiting or run.active:
                room = self.max_rows - len(run.active)
                if waiting and room > 0:
                    admit = [waiting.popleft() for _ in range(min(room, len(waiting)))]
                    first = run.admit([rows[i] for i in admit], admit)
                    for i, tok in zip(admit, first, strict=True):
                        out[i].append(tok)
                    end([i for i in admit if self._done(out[i], limits[i])])
                if not run.active:
                    continue
                for i, tok in zip(run.active, run.step(), strict=True):
                    out[i].append(tok)
                end([i for i in run.active if self._done(out[i], limits[i])])
        return out

    def _done(self, new: list[int], limit: int) -> bool:
        return len(new) >= limit or new[-1] in self.eos

    def close(self) -> None:
        """Nothing runs between batches (kept for the engine's ``close``)."""


class _Running:
    """The running batch: its rows (as indices of the caller's rows), cache, mask, last tokens."""

    def __init__(self, gen: ContinuousGenerator) -> None:
        self.gen = gen
        self.model = gen.model
        self.active: list[int] = []
        self.cache: Any = None  # a DynamicCache of DynamicLayers (checked at load)
        self.mask = torch.zeros(0, 0, dtype=torch.long, device=gen.device)
        self.last = torch.zeros(0, dtype=torch.long, device=gen.device)

    def admit(self, rows: list[list[int]], ids: list[int]) -> list[int]:
        """Prefill ``rows`` together, join them to the running batch; their first tokens."""
        width = max(len(r) for r in rows)
        dev = self.gen.device
        input_ids = torch.tensor(
            [[self.gen.pad_id] * (width - len(r)) + r for r in rows], device=dev
        )
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=dev)
        cache = DynamicCache(config=self.model.config)
        logits = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
            cache=cache,
            use_cache=True,
        ).logits[:, -1]
        first = logits.argmax(-1)
        self._join(cache, mask, first)
        self.active += ids
        return [int(t) for t in first.tolist()]

    def _join(self, cache: Any, mask: torch.Tensor, last: torch.Tensor) -> None:
        if self.cache is None or not self.active:
            self.cache, self.mask, self.last = cache, mask, last
            return
        have, new = self.mask.shape[1], mask.shape[1]
        width = max(have, new)
        for mine, theirs in zip(self.cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([_left_pad(mine.keys, width), _left_pad(theirs.keys, width)])
            mine.values = torch.cat(
                [_left_pad(mine.values, width), _left_pad(theirs.values, width)]
            )
        self.mask = torch.cat([_left_pad(self.mask, width), _left_pad(mask, width)])
        self.last = torch.cat([self.last, last])

    def step(self) -> list[int]:
        """Decode one token for every active row."""
        assert self.cache is not None
        ones = torch.ones(len(self.active), 1, dtype=self.mask.dtype, device=self.mask.device)
        self.mask = torch.cat([self.mask, ones], 1)
        logits = self.model(
            input_ids=self.last[:, None],
            attention_mask=self.mask,
            position_ids=self.mask.sum(-1, keepdim=True) - 1,
            cache=self.cache,
            use_cache=True,
        ).logits[:, -1]
        self.last = logits.argmax(-1)
        return [int(t) for t in self.last.tolist()]

    def drop(self, finished: list[int]) -> None:
        """Remove finished rows, then the leading columns no remaining row attends to."""
        if not finished:
            return
        gone = set(finished)
        keep = [b for b, i in enumerate(self.active) if i not in gone]
        self.active = [self.active[b] for b in keep]
        if not keep or self.cache is None:
            self.cache = None
            return
        index = torch.tensor(keep, device=self.mask.device)
        self.cache.batch_select_indices(index)
        self.mask, self.last = self.mask[index], self.last[index]
        lead = int((self.mask.sum(0) == 0).long().cumprod(0).sum())
        if lead:
            for layer in self.cache.layers:
                layer.keys = layer.keys[:, :, lead:]
                layer.values = layer.values[:, :, lead:]
            self.mask = self.mask[:, lead:]


def _left_pad(t: torch.Tensor, width: int) -> torch.Tensor:
    """Zeros on the left of the sequence axis (the last for a mask, the third for K/V)."""
    axis = 1 if t.dim() == 2 else 2
    short = width - t.shape[axis]
    if short <= 0:
        return t
    shape = list(t.shape)
    shape[axis] = short
    return torch.cat([t.new_zeros(shape), t], axis)
