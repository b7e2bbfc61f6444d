"""``blaze gateway`` (the HTTP service) and ``blaze keys`` (its API keys)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from blaze.cli.render import cli_settings, out, setup_logging, when
from pipelines.errors import ConfigError, ServiceUnavailable
from pipelines.settings import parse_duration

if TYPE_CHECKING:
    from blaze.gateway.auth import KeyStore

keys_app = typer.Typer(no_args_is_help=True, help="API keys of the gateway (stored hashed).")


def gateway(
    host: Annotated[str | None, typer.Option(help="bind address (default: gateway.host)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default: gateway.port)")] = None,
    workers: Annotated[int, typer.Option(min=1, max=64, help="worker processes")] = 1,
    tls_cert: Annotated[Path | None, typer.Option(help="serve HTTPS with this PEM cert")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="the certificate's PEM key")] = None,
    loglevel: str = "INFO",
) -> None:
    """Serve the jobs API and the OpenAI-compatible API over HTTP(S)."""
    import uvicorn

    settings = cli_settings()
    if (tls_cert is None) != (tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together")
    for path in (tls_cert, tls_key):
        if path is not None and not path.is_file():
            raise ConfigError(f"TLS file {path} does not exist")
    bind_port = port if port is not None else settings.gateway.port
    if not 0 < bind_port < 65536:
        raise ConfigError(f"--port must be 1-65535, got {bind_port}")
    setup_logging(loglevel)
    from blaze.gateway.app import create_app

    app: object = "blaze.gateway.app:from_env"
    if workers == 1:
        app = create_app(settings)  # settings errors surface here, before binding
    uvicorn.run(
        app,  # type: ignore[arg-type]
        factory=workers > 1,
        host=host or settings.gateway.host,
        port=bind_port,
        workers=workers,
        ssl_certfile=str(tls_cert) if tls_cert else None,
        ssl_keyfile=str(tls_key) if tls_key else None,
        log_config=None,
        log_level=loglevel.lower(),
        timeout_graceful_shutdown=10,
    )


@contextmanager
def _key_store() -> Iterator[KeyStore]:
    """The key store on the settings' Redis; a Redis failure is one clear line."""
    import redis

    from blaze.gateway.auth import KeyStore
    from pipelines.stores.redis_client import redis_client

    settings = cli_settings()
    client = redis_client(settings, health_check_s=30)
    try:
        yield KeyStore(settings, client)
    except redis.RedisError as exc:
        raise ServiceUnavailable("Redis", settings.redis_url, str(exc)[:200]) from None
    finally:
        client.close()


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="who the key is for")],
    scopes: Annotated[str, typer.Option(help="comma-separated: submit, read, admin")],
    tenant: Annotated[
        str | None, typer.Option(help="owner of what it creates (default: name)")
    ] = None,
    rate: Annotated[float | None, typer.Option(help="requests per second")] = None,
    jobs_per_min: Annotated[int | None, typer.Option(help="jobs per minute")] = None,
    max_open: Annotated[int | None, typer.Option(help="unfinished jobs at most")] = None,
    expires: Annotated[str | None, typer.Option(help="lifetime, e.g. 90d (default: none)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the record as JSON")] = False,
) -> None:
    """Create a key and print it once: only its hash is kept."""
    expires_s = parse_duration(expires, "--expires") if expires else None
    with _key_store() as keys:
        record, key = keys.create(
            name,
            scopes,
            tenant=tenant,
            expires_s=expires_s,
            requests_per_s=rate,
            jobs_per_min=jobs_per_min,
            max_open_jobs=max_open,
        )
    if as_json:
        print(json.dumps({**record.public(), "key": key}))
        return
    out.print(
        f"key {record.key_id} for {record.name} (tenant {record.tenant}), "
        f"scopes {','.join(record.scopes)}; it is shown only now:"
    )
    print(key)


@keys_app.command("list")
def keys_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every key: id, name, tenant, scopes, limits, expiry (never the key)."""
    with _key_store() as keys:
        records = keys.records()
    if as_json:
        print(json.dumps([r.public() for r in records]))
        return
    from rich.table import Table

    table = Table("id", "name", "tenant", "scopes", "rate/s", "jobs/min", "open", "expires")
    for r in records:
        table.add_row(
            r.key_id,
            r.name,
            r.tenant,
            ",".join(r.scopes),
            *(
                str(v) if v is not None else "-"
                for v in (r.requests_per_s, r.jobs_per_min, r.max_open_jobs)
            ),
            when(r.expires_at) if r.expires_at else "never",
        )
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(ref: Annotated[str, typer.Argument(help="key id, or name (all its keys)")]) -> None:
    """Revoke keys: every replica refuses them within gateway.key_cache_s."""
    with _key_store() as keys:
        revoked = keys.revoke(ref)
    if not revoked:
        raise ConfigError(f"no key with id or name {ref!r}")
    out.print(f"revoked {', '.join(revoked)}")


def register(app: typer.Typer) -> None:
    app.command()(gateway)
    app.add_typer(keys_app, name="keys")
