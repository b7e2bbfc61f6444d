"""The LLM engine: a transformers causal LM generating for a whole batch with left padding.

Rows of one batch may ask for different ``max_new_tokens`` and ``stop`` strings: a per-row
stopping criterion ends each row at its own limit, so one long job does not make the short
ones generate past theirs, and generation stops as soon as every row is done.

In float32, rows that start with the same tokens (a chat template's system prompt, a shared
instruction) have that prefix computed once per batch: its keys and values are repeated for
every row and each row's own tokens follow it, left-padded; the text is the same as without
the sharing. In bfloat16 and float16 the sharing is off: computing the prefix apart rounds
differently, and measured on the demo's questions it changed answers a job alone gets right
(``bench/agreement.py``; the README's "Answers and batches").

``batch_invariant`` asks for a job's greedy text to be the same alone and in any batch: the
model computes in float32 and without the shared prefix, so rows differ from a lone run only
by the padding of their batch, which in float32 changes no text (checked by a unit test).
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DynamicCache,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

from engines.base import Output, parameter_bytes, resolve_dtype, torch_dtype, weights_digest
from engines.continuous import ContinuousGenerator
from engines.early import report_finished
from pipelines.errors import ModelUnavailable
from pipelines.jobs import LLMJob

log = logging.getLogger(__name__)

# a shared prefix shorter than this is computed per row: one more forward call would cost more
MIN_SHARED_TOKENS = 8


class _RowLimits(StoppingCriteria):
    """Marks each row done at its own token limit or when it produced one of its stop strings."""

    def __init__(self, prompt_len: int, limits: list[int], stops: list[list[str]], tokenizer: Any):
        self.prompt_len = prompt_len
        self.limits = torch.tensor(limits)
        self.stops = stops
        self.tokenizer = tokenizer
        self.tail = max((len(s) for row in stops for s in row), default=0) + 8

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kw: Any
    ) -> torch.BoolTensor:
        generated = input_ids.shape[1] - self.prompt_len
        done = self.limits.to(input_ids.device) <= generated
        for i, row_stops in enumerate(self.stops):
            if row_stops and not done[i]:
                tail_ids = input_ids[i, max(self.prompt_len, input_ids.shape[1] - self.tail) :]
                tail = self.tokenizer.decode(tail_ids, skip_special_tokens=True)
                if any(s in tail for s in row_stops):
                    done[i] = True
        return done  # type: ignore[return-value]


class _RowSampler(LogitsProcessor):
    """Samples each row with its own seeded generator, then forces that token.

    Rows with temperature 0 are left to greedy decoding. Each sampled row draws from its own
    ``torch.Generator`` seeded with the job's seed, so a job gives the same text whatever
    other jobs share its batch.
    """

    def __init__(self, temperatures: list[float], top_ps: list[float], seeds: list[int]):
        self.temperatures = temperatures
        self.top_ps = top_ps
        self.generators = [
            torch.Generator().manual_seed(seed) if t > 0 else None
            for t, seed in zip(temperatures, seeds, strict=True)
        ]
        self.active = any(g is not None for g in self.generators)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for i, gen in enumerate(self.generators):
            if gen is None:
                continue
            probs = torch.softmax(scores[i].float().cpu() / self.temperatures[i], dim=-1)
            if self.top_ps[i] < 1.0:
                sorted_p, order = torch.sort(probs, descending=True)
                cut = torch.cumsum(sorted_p, dim=-1) - sorted_p >= self.top_ps[i]
                sorted_p[cut] = 0.0
                probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
            token = int(torch.multinomial(probs, 1, generator=gen))
            scores[i] = float("-inf")
            scores[i, token] = 0.0
        return scores


class TransformersLLM:
    """An LLM loaded once on one device, generating for whole batches.

    Args:
        name: The model name jobs use.
        path: A folder loadable by ``from_pretrained`` (config, weights, tokenizer).
        dtype: ``auto`` (``engines.base.resolve_dtype``), ``bfloat16`` (fastest where the
            device computes it natively), ``float16`` or ``float32``.
    """

    @property
    def concurrent(self) -> bool:
        """With continuous generation, calls from several threads share one running batch (the
        rest of each call takes turns under ``_lock``); a static engine runs one call at a
        time, taking turns in the worker's ``EngineCache``."""
        return self.generation == "continuous"

    def __init__(
        self,
        name: str,
        path: Path,
        dtype: str = "auto",
        quantize: str = "none",
        batch_invariant: bool = False,
        generation: str = "static",
        max_rows: int = 16,
    ) -> None:
        torch_dtype(resolve_dtype(dtype, "cpu"), name)  # an unknown dtype fails here
        self.name = name
        self.path = Path(path)
        self.batch_invariant = batch_invariant
        self.requested_dtype = "float32" if batch_invariant else dtype
        self.dtype = resolve_dtype(self.requested_dtype, "cpu")  # again at load, for its device
        self.quantize = quantize
        self.share_prefix = self._prefix_allowed()
        if generation not in ("static", "continuous"):
            raise ModelUnavailable(
                f"model {name}: generation {generation!r} is not 'static' or 'continuous'"
            )
        self.generation = generation
        self.max_rows = max_rows
        self.continuous: ContinuousGenerator | None = None
        # calls from several threads (a worker holding several batches) share the continuous
        # running batch; tokenizing, decoding and static ``generate`` take turns under this
        self._lock = threading.RLock()
        self._eos: set[int] = set()
        self.device = "cpu"
        self.model: Any = None
        self.tokenizer: Any = None
        self._digest = ""

    def _prefix_allowed(self) -> bool:
        """A prefix computed apart changes no text in float32 only (the module docstring)."""
        return self.dtype == "float32" and not self.batch_invariant

    def load(self, device: str) -> None:
        self.dtype = resolve_dtype(self.requested_dtype, device)
        self.share_prefix = self._prefix_allowed()
        try:
            tok = AutoTokenizer.from_pretrained(self.path)
            model = AutoModelForCausalLM.from_pretrained(
                self.path, dtype=torch_dtype(self.dtype, self.name)
            )
        except (OSError, ValueError) as exc:
            raise ModelUnavailable(
                f"model {self.name} failed to load from {self.path}: {exc}"
            ) from None
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        if self.quantize == "int8":
            # dynamic int8 Linear layers: weights stored as int8, activations quantised per
            # call; its kernels are float32/CPU-only
            from torch.ao.quantization import quantize_dynamic

            model = quantize_dynamic(  # type: ignore[no-untyped-call]
                model.float(),  # type: ignore[no-untyped-call]
                {torch.nn.Linear},
                dtype=torch.qint8,
            )
        self.model = model.to(device).eval()  # type: ignore[arg-type]
        self.tokenizer = tok
        self.device = device
        self._digest = weights_digest(self.path)
        eos = _as_list(self.model.generation_config.eos_token_id)
        self._eos = set(eos) | {tok.eos_token_id}
        self.close()
        if self.generation == "continuous":
            layers = DynamicCache(config=self.model.config).layers
            if not all(type(layer).__name__ == "DynamicLayer" for layer in layers):
                raise ModelUnavailable(
                    f"model {self.name}: generation continuous needs full-attention layers "
                    "(this model has sliding-window or other cache layers); use static"
                )
            self.continuous = ContinuousGenerator(
                self.model, self._eos, self.max_rows, pad_id=int(tok.pad_token_id)
            )
        log.info("loaded %s from %s on %s (%s)", self.name, self.path, device, self.dtype)

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "weights": self._digest,
            "path": str(self.path),
            "dtype": self.dtype,
            "quantize": self.quantize,
            "batch_invariant": self.batch_invariant,
            "generation": self.generation,
            "device": self.device,
        }

    def close(self) -> None:
        """Stop the continuous batching loop, if one runs."""
        if self.continuous is not None:
            self.continuous.close()
            self.continuous = None

    def memory_bytes(self) -> int:
        if self.model is None:
            return 0
        size = parameter_bytes(self.model)
        # dynamic int8 layers keep packed weights outside .parameters()
        packed = sum(
            m.weight().numel()  # int8: one byte per weight
            for m in self.model.modules()
            if callable(getattr(m, "weight", None))
        )
        return size + int(packed)

    def _render(self, job: LLMJob) -> str:
        if job.messages is not None:
            msgs = [m.model_dump() for m in job.messages]
            text: str = self.tokenizer.apply_chat_template(
                msgs, tokenize=False, add_generation_prompt=True
            )
            return text
        assert job.prompt is not None
        return job.prompt

    def run(self, batch: Sequence[LLMJob]) -> list[Output]:
        """Generate for the whole batch in one call.

        Raises on a failure of the call itself (the worker then splits the batch to isolate
        the cause); a job that cannot run (prompt too long) gets its own error output.
        """
        if self.model is None:
            raise ModelUnavailable(f"model {self.name} is not loaded")
        return self._generate(list(batch))

    def _inputs(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """Input ids, attention mask and, where the rows share a prefix, a cache holding it.

        The layout with a shared prefix is ``[prefix][padding][own tokens]``: positions count
        only unmasked tokens, so every row sees the prefix at the positions it would have alone.
        """
        tok, n = self.tokenizer, _shared_prefix(rows) if self.share_prefix else 0
        if n < MIN_SHARED_TOKENS or not self.model._supports_default_dynamic_cache():
            enc = tok.pad({"input_ids": rows}, return_tensors="pt")
            return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device), None
        own = tok.pad({"input_ids": [r[n:] for r in rows]}, return_tensors="pt")
        head = torch.tensor([rows[0][:n]], device=self.device)
        cache = DynamicCache(config=self.model.config)
        with torch.inference_mode():
            self.model(input_ids=head, cache=cache, use_cache=True)
        cache.batch_repeat_interleave(len(rows))
        own_mask = own["attention_mask"].to(self.device)
        input_ids = torch.cat([head.expand(len(rows), n), own["input_ids"].to(self.device)], 1)
        mask = torch.cat(
            [torch.ones(len(rows), n, dtype=own_mask.dtype, device=self.device), own_mask], 1
        )
        return input_ids, mask, cache

    def _generate(self, jobs: list[LLMJob]) -> list[Output]:
        with self._lock:
            ids, prompt_lens, errors = self._tokenize(jobs)
        live = [i for i in range(len(jobs)) if i not in errors]
        out: list[Output] = [Output(error=errors.get(i)) for i in range(len(jobs))]
        flowing: list[int] = []
        if self.continuous is not None:  # greedy rows without stop strings
            flowing = [i for i in live if jobs[i].temperature == 0 and not jobs[i].stop]
            live = [i for i in live if i not in set(flowing)]
        if flowing:
            limits = [jobs[i].max_new_tokens for i in flowing]

            def row_done(row: int, new: list[int]) -> None:
                i = flowing[row]  # each job's output the step it ends: written early
                with self._lock:
                    out[i] = self._output(jobs[i], new[: limits[row]], prompt_lens[i], None)
                report_finished(jobs[i].job_id, out[i])

            assert self.continuous is not None
            self.continuous.generate([ids[i] for i in flowing], limits, row_done)
        if live:
            with self._lock:
                self._static(jobs, live, ids, prompt_lens, out)
        return out

    def _tokenize(self, jobs: list[LLMJob]) -> tuple[list[list[int]], list[int], dict[int, str]]:
        """Each job's prompt ids and their lengths, and the jobs that cannot run and why."""
        tok = self.tokenizer
        limit = getattr(self.model.config, "max_position_embeddings", None) or 1 << 30
        texts: list[str] = []
        errors: dict[int, str] = {}
        for i, job in enumerate(jobs):
            try:
                texts.append(self._render(job))
            except Exception as exc:
                errors[i] = f"cannot render prompt: {exc}"
                texts.append("")
        # one batched tokenisation: lengths for the context check, then padding of the same ids
        ids: list[list[int]] = tok(texts, add_special_tokens=False)["input_ids"]
        prompt_lens = [len(x) for x in ids]
        for i, (job, n) in enumerate(zip(jobs, prompt_lens, strict=True)):
            if n + job.max_new_tokens > limit:
                errors[i] = (
                    f"prompt ({n} tokens) + max_new_tokens ({job.max_new_tokens}) "
                    f"exceeds the model's {limit}-token context"
                )
        return ids, prompt_lens, errors

    def _static(
        self,
        jobs: list[LLMJob],
        live: list[int],
        ids: list[list[int]],
        prompt_lens: list[int],
        out: list[Output],
    ) -> None:
        """One ``generate`` call for the rows ``live`` of ``jobs``; their outputs into ``out``."""
        tok = self.tokenizer
        input_ids, mask, cache = self._inputs([ids[i] for i in live])
        width = input_ids.shape[1]
        limits = [jobs[i].max_new_tokens for i in live]
        stops = [list(jobs[i].stop) for i in live]
        criteria = StoppingCriteriaList([_RowLimits(width, limits, stops, tok)])
        seeds: list[int] = []
        for i in live:
            seed = jobs[i].seed
            seeds.append(seed if seed is not None else secrets.randbelow(2**32))
        sampler = _RowSampler(
            [jobs[i].temperature for i in live], [jobs[i].top_p for i in live], seeds
        )
        with torch.inference_mode():
            seqs = self.model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                cache=cache,
                max_new_tokens=max(limits),
                pad_token_id=tok.pad_token_id,
                do_sample=False,  # sampled rows are decided by _RowSampler, one RNG per row
                temperature=None,
                top_p=None,
                top_k=None,
                stopping_criteria=criteria,
                logits_processor=LogitsProcessorList([sampler]) if sampler.active else None,
            )
        for row, i in enumerate(live):
            new = seqs[row, width:].tolist()[: limits[row]]
            out[i] = self._output(jobs[i], new, prompt_lens[i], seeds[row])

    def _output(self, job: LLMJob, new: list[int], prompt_len: int, seed: int | None) -> Output:
        """A row's output from its new tokens: cut at end-of-sequence, then at a stop string."""
        finish = "length"
        for n, t in enumerate(new):
            if t in self._eos:
                new, finish = new[:n], "stop"
                break
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        for s in job.stop:
            cut = text.find(s)
            if cut >= 0:
                text, finish = text[:cut], "stop"
        sampled = job.temperature > 0
        return Output(
            text=text,
            finish_reason=finish,
            prompt_tokens=prompt_len,
            completion_tokens=len(new),
            info={"seed": seed if sampled else None, "sampling": sampled},
        )


def _shared_prefix(rows: list[list[int]]) -> int:
    """How many leading tokens all rows (two or more) share, leaving each at least one own."""
    if len(rows) < 2:
        return 0
    first, most = rows[0], min(len(r) for r in rows) - 1
    n = 0
    while n < most and all(r[n] == first[n] for r in rows):
        n += 1
    return n


def _as_list(value: int | list[int] | None) -> list[int]:
    if value is None:
        return []
    return [value] if isinstance(value, int) else list(value)
