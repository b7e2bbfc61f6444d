"""Which engine runs a registered model: one table keyed by the registry's engine name and kind.

The key is ``(spec.engine_name, spec.kind)``: the engine name alone is ambiguous, since
``transformers`` runs both causal LMs and encoders. Each builder imports its engine module when
first used, so a worker that serves only echo models never imports torch's model stacks.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from engines.base import Engine
from engines.sources import resolve_model
from pipelines.errors import ModelUnavailable
from pipelines.registry import ModelSpec, Registry, load_registry
from pipelines.settings import BlazeSettings

EngineFactory = Callable[[str], Engine[Any]]
"""Builds (without loading) the engine of a model name."""
Builder = Callable[[BlazeSettings, ModelSpec], Engine[Any]]


def _echo(settings: BlazeSettings, spec: ModelSpec) -> Engine[Any]:
    from engines.echo import EchoEngine

    return EchoEngine(spec.name)


def _causal_lm(settings: BlazeSettings, spec: ModelSpec) -> Engine[Any]:
    from engines.llm import TransformersLLM

    folder = resolve_model(settings, spec)
    return TransformersLLM(
        spec.name,
        folder,
        dtype=spec.dtype,
        quantize=spec.quantize,
        batch_invariant=spec.batch_invariant,
        generation=spec.generation,
        max_rows=spec.max_rows or spec.batch_limits(settings)[0],
    )


def _encoder(settings: BlazeSettings, spec: ModelSpec) -> Engine[Any]:
    from engines.embed import TransformersEmbedder

    return TransformersEmbedder(spec.name, resolve_model(settings, spec), dtype=spec.dtype)


def _diffusers(settings: BlazeSettings, spec: ModelSpec) -> Engine[Any]:
    from engines.diffusion import DiffusersEngine

    return DiffusersEngine(spec.name, resolve_model(settings, spec), spec)


ENGINES: dict[tuple[str, str], Builder] = {
    ("transformers", "llm"): _causal_lm,
    ("transformers", "embed"): _encoder,
    ("diffusers", "diffusion"): _diffusers,
    ("echo", "llm"): _echo,
}


def _imported(spec: ModelSpec) -> Builder | None:
    """A ``module:callable`` engine of the registry, imported on first use."""
    if ":" not in spec.engine_name:
        return None
    module, _, name = spec.engine_name.partition(":")
    try:
        build = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ModelUnavailable(
            f"model {spec.name!r}: engine {spec.engine_name!r} cannot be imported: {exc}"
        ) from None
    if not callable(build):
        raise ModelUnavailable(f"model {spec.name!r}: engine {spec.engine_name!r} is not callable")
    return build  # type: ignore[no-any-return]


def engine_factory(
    settings: BlazeSettings, dtype: str | None = None, registry: Registry | None = None
) -> EngineFactory:
    """Builds the engine a registered model asks for; ``dtype`` overrides the registry's."""
    state = {"registry": registry or load_registry(settings)}

    def make(model: str) -> Engine[Any]:
        spec = state["registry"].get(model)
        if spec is None and registry is None:  # a folder may have appeared since start-up
            state["registry"] = load_registry(settings)
            spec = state["registry"].get(model)
        if spec is None:
            known = ", ".join(state["registry"].names())
            raise ModelUnavailable(f"unknown model {model!r} (known: {known})")
        if dtype is not None:
            spec = spec.model_copy(update={"dtype": dtype})
        build = ENGINES.get((spec.engine_name, spec.kind)) or _imported(spec)
        if build is None:
            runs = sorted(kind for engine, kind in ENGINES if engine == spec.engine_name)
            raise ModelUnavailable(
                f"model {model!r}: engine {spec.engine_name!r} does not run {spec.kind} models "
                f"(it runs: {', '.join(runs)})"
            )
        return build(settings, spec)

    return make
