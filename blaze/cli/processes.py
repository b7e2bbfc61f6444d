"""``blaze worker`` and ``blaze consume``: the long-running processes, composed here.

The worker is handed its stores and the OpenAI batch finalizer from here, so ``engines``
needs neither the producer SDK nor the OpenAI layer. Each command imports its process's
packages when it runs, so other commands start without them.
"""

from __future__ import annotations

import signal
import threading
from typing import Annotated, get_args

import typer

from blaze.cli.render import cli_settings, setup_logging
from pipelines.errors import ConfigError
from pipelines.registry import DEVICE
from pipelines.settings import RoutingStrategy

MetricsPort = Annotated[
    int,
    typer.Option(
        min=0,
        max=65535,
        help="serve /metrics, /livez, /readyz here (0: a free port, recorded for blaze health)",
    ),
]
STRATEGIES = get_args(RoutingStrategy)
LogFormat = Annotated[str | None, typer.Option(help="text or json (default: settings)")]


def worker(
    device: Annotated[str, typer.Option(help="cpu, cpu:N or cuda:N")] = "cpu",
    model: Annotated[
        list[str] | None, typer.Option("--model", help="preload this model (repeatable)")
    ] = None,
    dtype: Annotated[
        str | None,
        typer.Option(help="auto, bfloat16, float16 or float32 (default: the registry's)"),
    ] = None,
    kind: Annotated[
        list[str] | None, typer.Option("--kind", help="llm, diffusion, embed (default: all)")
    ] = None,
    loglevel: str = "INFO",
    metrics_port: MetricsPort = 0,
    log_format: LogFormat = None,
) -> None:
    """Run a Celery worker pinned to one device, serving that device's queues."""
    from engines.base import DTYPE_NAMES
    from pipelines.jobs import JOB_KINDS

    for k in kind or []:
        if k not in JOB_KINDS:
            raise ConfigError(f"--kind must be llm, diffusion or embed, got {k!r}")
    if dtype is not None and dtype not in DTYPE_NAMES:
        raise ConfigError(f"--dtype must be auto, bfloat16, float16 or float32, got {dtype!r}")
    settings = cli_settings()
    from engines.devices import pin_device

    pin_device(device)  # validates (and pins) before torch is imported
    from engines.recovery import DeviceLost
    from engines.worker import run_worker
    from pipelines.openai.service import BatchService, finalize_groups
    from pipelines.stores import connect

    setup_logging(loglevel, log_format)
    results = connect.result_store(settings)
    results.ensure_bucket()
    status = connect.status_store(settings)
    dead = connect.dead_letters(settings)
    try:
        run_worker(
            settings,
            results=results,
            status=status,
            on_groups_done=finalize_groups(BatchService(settings, results, status)),
            device=device,
            preload=model or [],
            dtype=dtype,
            loglevel=loglevel,
            kinds=kind or JOB_KINDS,
            metrics_port=metrics_port,
            dead_letters=dead,
            answers=connect.result_cache(settings, results),
            registry=connect.live_registry(settings),
        )
    except DeviceLost as exc:
        typer.echo(f"worker stopped: device lost: {exc}", err=True)
        raise typer.Exit(3) from None
    finally:
        results.close()
        status.close()
        dead.close()


def consume(
    device: Annotated[
        list[str] | None,
        typer.Option("--device", help="route only to these devices (repeatable; default: all)"),
    ] = None,
    strategy: Annotated[
        str | None,
        typer.Option(
            help="model_affinity, least_outstanding, round_robin, weighted, fastest or "
            "power_of_two (default: settings; a model's own routing wins)"
        ),
    ] = None,
    loglevel: str = "INFO",
    metrics_port: MetricsPort = 0,
    log_format: LogFormat = None,
) -> None:
    """Run the Kafka intake consumer: batch jobs and dispatch them to worker queues."""
    stop = threading.Event()  # SIGTERM during start-up still means a clean stop
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if strategy is not None and strategy not in STRATEGIES:
        raise ConfigError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    for d in device or []:
        if not DEVICE.match(d):
            raise ConfigError(f"--device must be 'cpu', 'cpu:N' or 'cuda:N', got {d!r}")
    settings = cli_settings()
    setup_logging(loglevel, log_format)
    from consumers.service import run_intake
    from pipelines.openai.service import BatchService, finalize_groups
    from pipelines.stores import connect

    registry = connect.live_registry(settings)
    results = connect.result_store(settings)
    status = connect.status_store(settings)
    try:
        run_intake(
            settings,
            devices=device,
            stop=stop,
            strategy=strategy,
            registry=registry,
            metrics_port=metrics_port,
            answers=connect.result_cache(settings, results, memory=True),
            on_groups_done=finalize_groups(BatchService(settings, results, status)),
        )
    finally:
        results.close()
        status.close()


def register(app: typer.Typer) -> None:
    app.command()(worker)
    app.command()(consume)
