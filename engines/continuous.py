"""Continuous batching for the LLM engine: a row leaves the running batch the step it ends and
a waiting row takes its slot, whichever batch it came from.

Static ``generate`` computes every row of a batch until its longest row ends, so with mixed
``max_new_tokens`` (and rows that stop at end-of-sequence) most steps run for rows that are
done, and a batch is as slow as its longest row. Here the engine keeps up to ``max_rows`` rows
in one running KV cache: each step decodes one token for every active row; a finished row is
dropped from the cache; waiting rows are prefilled together and joined to the cache
(left-padded to a common length, as a static batch is). Columns that are padding for every
row are trimmed as rows leave, so the cache stays as long as its longest live row.

Several callers share the running batch: a worker holding more than one batch
(``worker.batches_in_hand``) calls ``generate`` from one thread per batch, and the rows of the
next batch take the slots the current batch's finished rows leave, instead of waiting for its
longest row. Whichever caller holds the step lock steps for everyone; the others wait to be
woken when one of their rows ends (or the stepper leaves), hear of their own rows in their own
thread (so results are written by the batch they belong to) and return when their last row
ends. No thread runs between calls.

Written here rather than taken from transformers' continuous batching manager
(``init_continuous_batching``): on this 2-core CPU, with the same 16 rows at once, the manager
was 1.03-1.06x a static batch (its paged attention and per-step scheduling cost as much as the
padding it saves) and, with its default cache sizing, zeroed gigabytes of memory before the
first token. Greedy rows only; the engine runs sampled rows and rows with stop strings on its
static path.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import torch
from transformers import DynamicCache


class _Call:
    """One ``generate`` call: its rows' tokens, which ended and were not yet heard of, and
    the error that ended it if a step failed."""

    def __init__(self, n: int) -> None:
        self.out: list[list[int]] = [[] for _ in range(n)]
        self.left = n  # rows not ended
        self.ended: deque[int] = deque()  # ended rows the caller has not heard of yet
        self.error: BaseException | None = None
        self.gone = False  # the caller left (raised): its rows are dropped


class _Row:
    __slots__ = ("call", "ids", "index", "limit")

    def __init__(self, call: _Call, index: int, ids: list[int], limit: int) -> None:
        self.call, self.index, self.ids, self.limit = call, index, ids, limit

    @property
    def out(self) -> list[int]:
        return self.call.out[self.index]


class ContinuousGenerator:
    """Greedy generation with a refilled running batch shared by its callers (see the module
    docstring).

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
        self._step = threading.Lock()  # held by the caller stepping the running batch
        self._state = threading.Lock()  # guards the waiting rows and every call's ended rows
        self._wake = threading.Condition(self._state)  # a row ended, or the stepper let go
        self._waiting: deque[_Row] = deque()
        self._run = _Running(self)

    def generate(
        self,
        rows: list[list[int]],
        limits: list[int],
        on_row: Callable[[int, list[int]], None] | None = None,
    ) -> list[list[int]]:
        """The new tokens of each row (its end-of-sequence token included when it stopped);
        ``on_row(i, tokens)`` hears of each row, in the calling thread, soon after it ends.
        Safe to call from several threads at once: their rows share the running batch."""
        call = _Call(len(rows))
        with self._state:
            self._waiting.extend(
                _Row(call, i, r, n) for i, (r, n) in enumerate(zip(rows, limits, strict=True))
            )
        try:
            while True:
                self._hear(call, on_row)
                if call.error is not None:
                    raise call.error
                if call.left == 0:
                    return call.out
                if self._step.acquire(blocking=False):
                    try:
                        if call.left and call.error is None:
                            self._iterate()
                    finally:
                        self._step.release()
                    with self._wake:
                        self._wake.notify_all()  # a waiting caller may step next
                else:  # another caller steps for everyone: wait for a row of ours to end
                    with self._wake:
                        self._wake.wait_for(
                            lambda: call.ended or call.error or not self._step.locked(), 0.05
                        )
        finally:
            if call.left:
                self._leave(call)

    def _hear(self, call: _Call, on_row: Callable[[int, list[int]], None] | None) -> None:
        with self._state:
            ended, call.ended = list(call.ended), deque()
        if on_row is not None:
            for i in ended:
                on_row(i, call.out[i])

    def _leave(self, call: _Call) -> None:
        """A caller left before its rows ended (it raised): drop its rows."""
        with self._state:
            call.gone = True
            self._waiting = deque(r for r in self._waiting if r.call is not call)

    def _iterate(self) -> None:
        """Admit waiting rows into free slots, then decode one token for every active row
        (the step lock is held). A failing step ends every call with a row in the batch."""
        run = self._run
        admit: list[_Row] = []
        try:
            with torch.inference_mode():
                run.drop([r for r in run.active if r.call.gone])
                with self._state:
                    room = self.max_rows - len(run.active)
                    admit = [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]
                if admit:
                    for row, tok in zip(admit, run.admit(admit), strict=True):
                        row.out.append(tok)
                    self._end([r for r in admit if self._done(r)])
                if run.active:
                    for row, tok in zip(run.active, run.step(), strict=True):
                        row.out.append(tok)
                    self._end([r for r in run.active if self._done(r)])
        except Exception as exc:  # each call with a row in the batch raises it (the engine
            # call fails and the worker isolates the cause as after a failed static batch)
            hit = {id(r.call): r.call for r in [*run.active, *admit]}
            run.reset()
            with self._wake:
                for call in hit.values():
                    call.error = exc
                self._wake.notify_all()
                self._waiting = deque(r for r in self._waiting if id(r.call) not in hit)

    def _end(self, rows: list[_Row]) -> None:
        if not rows:
            return
        with self._wake:
            for r in rows:
                r.call.left -= 1
                r.call.ended.append(r.index)
            self._wake.notify_all()
        self._run.drop(rows)

    def _done(self, row: _Row) -> bool:
        new = row.out
        return len(new) >= row.limit or new[-1] in self.eos

    def close(self) -> None:
        """Nothing runs between calls (kept for the engine's ``close``)."""


class _Running:
    """The running batch: its rows, cache, mask and last tokens."""

    def __init__(self, gen: ContinuousGenerator) -> None:
        self.gen = gen
        self.model = gen.model
        self.active: list[_Row] = []
        self.cache: Any = None  # a DynamicCache of DynamicLayers (checked at load)
        self.mask = torch.zeros(0, 0, dtype=torch.long, device=gen.device)
        self.last = torch.zeros(0, dtype=torch.long, device=gen.device)

    def reset(self) -> None:
        self.active, self.cache = [], None

    def admit(self, rows: list[_Row]) -> list[int]:
        """Prefill ``rows`` together, join them to the running batch; their first tokens."""
        width = max(len(r.ids) for r in rows)
        dev = self.gen.device
        pad = self.gen.pad_id
        input_ids = torch.tensor([[pad] * (width - len(r.ids)) + r.ids for r in rows], device=dev)
        mask = torch.tensor(
            [[0] * (width - len(r.ids)) + [1] * len(r.ids) for r in rows], device=dev
        )
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
        self.active += rows
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

    def drop(self, finished: list[_Row]) -> None:
        """Remove finished rows, then the leading columns no remaining row attends to."""
        if not finished:
            return
        gone = {id(r) for r in finished}
        keep = [b for b, r in enumerate(self.active) if id(r) not in gone]
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
