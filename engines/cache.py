"""Engines by model name, loaded once on the worker's device and reused across batches."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from engines.base import Engine, memory_bytes
from engines.factory import EngineFactory
from engines.isolate import free_accelerator_memory
from pipelines.errors import ModelUnavailable

log = logging.getLogger(__name__)

RETRY_FAILED_LOAD_S = 60.0


@dataclass
class EngineCache:
    """Engines by model name, each loaded once on this worker's device and then reused.

    With a ``budget_bytes``, loading a model that would not fit unloads the least recently
    used ones first. A model that fails to load is remembered as unhealthy for
    ``RETRY_FAILED_LOAD_S``: its jobs fail with the load error instead of the worker crashing
    or reloading every batch. Safe to share between the threads of a worker holding several
    batches: a model loads once, an engine that is not ``concurrent`` runs one call at a time,
    and a batch sent back to run alone runs with no other engine call beside it (``turn``).
    """

    factory: EngineFactory
    device: str
    budget_bytes: int | None = None
    engines: OrderedDict[str, Engine[Any]] = field(default_factory=OrderedDict)
    failures: dict[str, tuple[float, str]] = field(default_factory=dict)
    unloaded: list[str] = field(default_factory=list)
    on_load: Callable[[str], None] | None = None
    on_unload: Callable[[str], None] | None = None
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    _busy: set[str] = field(default_factory=set, repr=False)  # models whose turn is taken
    _free: threading.Condition = field(default_factory=threading.Condition, repr=False)
    _gate: _Gate = field(default_factory=lambda: _Gate(), repr=False)

    def loaded(self, model: str) -> Engine[Any] | None:
        """The model's engine if it is loaded; never loads (safe from another thread)."""
        return self.engines.get(model)

    def get(self, model: str) -> Engine[Any]:
        with self._lock:  # a second thread asking for a loading model waits for it
            return self._get(model)

    @contextmanager
    def turn(self, model: str, engine: Engine[Any], alone: bool = False) -> Iterator[None]:
        """Held around a call of ``engine``: one call at a time unless the engine says it is
        ``concurrent`` (the LLM engine: its continuous running batch takes rows from every
        caller). An ``alone`` call (a batch the reaper sent back to run by itself) waits until
        no other call runs on this worker, and none starts beside it: if its job kills the
        worker, no other batch was running to share the blame."""
        with self._gate.held(alone):
            if getattr(engine, "concurrent", False):
                yield
                return
            with self._free:
                self._free.wait_for(lambda: model not in self._busy)
                self._busy.add(model)
            try:
                yield
            finally:
                with self._free:
                    self._busy.discard(model)
                    self._free.notify_all()

    def wait_turn(self, model: str, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` until no call of ``model``'s engine holds its turn (woken
        the moment one ends); True when none does. Engines that are ``concurrent`` never
        hold one."""
        with self._free:
            return self._free.wait_for(lambda: model not in self._busy, timeout_s)

    def _get(self, model: str) -> Engine[Any]:
        if model in self.engines:
            self.engines.move_to_end(model)
            return self.engines[model]
        failed = self.failures.get(model)
        if failed and time.monotonic() - failed[0] < RETRY_FAILED_LOAD_S:
            raise ModelUnavailable(failed[1])
        try:
            engine = self.factory(model)
            engine.load(self.device)
        except ModelUnavailable as exc:
            self.failures[model] = (time.monotonic(), str(exc))
            raise
        except Exception as exc:  # any loader error marks the model unhealthy, not the worker
            msg = f"model {model} failed to load: {type(exc).__name__}: {exc}"
            self.failures[model] = (time.monotonic(), msg)
            raise ModelUnavailable(msg) from exc
        self.failures.pop(model, None)
        self.engines[model] = engine
        if self.on_load is not None:
            self.on_load(model)
        self._fit_budget(keep=model)
        return engine

    def reload(self, model: str) -> Engine[Any]:
        """Drop the model's engine and load it again (after a device error); raises
        ``ModelUnavailable`` if it no longer loads."""
        with self._lock:
            dropped = self.engines.pop(model, None)
            if dropped is not None:
                _close(dropped)
                if self.on_unload is not None:
                    self.on_unload(model)
            self.failures.pop(model, None)
            free_accelerator_memory()
            return self._get(model)

    def loaded_bytes(self) -> int:
        return sum(memory_bytes(e) for e in self.engines.values())

    def _fit_budget(self, keep: str) -> None:
        if self.budget_bytes is None:
            return
        while self.loaded_bytes() > self.budget_bytes and len(self.engines) > 1:
            victim = next(m for m in self.engines if m != keep)
            _close(self.engines.pop(victim))
            self.unloaded.append(victim)
            if self.on_unload is not None:
                self.on_unload(victim)
            free_accelerator_memory()
            log.info("unloaded %s (least recently used) to stay under the memory budget", victim)

    def health(self) -> dict[str, str]:
        out = {m: "loaded" for m in self.engines}
        out.update({m: f"unhealthy: {why}" for m, (_, why) in self.failures.items()})
        return out


class _Gate:
    """Shared for ordinary engine calls, exclusive for ``alone`` ones; a waiting exclusive
    call keeps new shared ones out, so a backlog cannot starve it. (The standard library has
    no reader-writer lock; this is the whole of one.)"""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting = 0  # exclusive calls waiting

    @contextmanager
    def held(self, exclusive: bool) -> Iterator[None]:
        with self._cond:
            if exclusive:
                self._waiting += 1
                self._cond.wait_for(lambda: not self._exclusive and not self._shared)
                self._waiting -= 1
                self._exclusive = True
            else:
                self._cond.wait_for(lambda: not self._exclusive and not self._waiting)
                self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                if exclusive:
                    self._exclusive = False
                else:
                    self._shared -= 1
                self._cond.notify_all()


def _close(engine: Engine[Any]) -> None:
    """Stop what an unloaded engine runs besides its weights (``close()``, where it has one:
    the LLM engine's continuous batching thread)."""
    close = getattr(engine, "close", None)
    if callable(close):
        try:
            close()
        except Exception as exc:  # the engine is dropped either way
            log.warning("closing %s: %s", getattr(engine, "name", engine), exc)
