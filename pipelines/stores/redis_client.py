"""One way to open a Redis (or Valkey) connection from settings: URL, password, timeouts."""

from __future__ import annotations

from typing import Any

import redis

from pipelines.settings import BlazeSettings


def redis_client(
    settings: BlazeSettings,
    *,
    connect_timeout_s: float = 5,
    timeout_s: float | None = 30,
    health_check_s: int = 0,
) -> redis.Redis:
    """A client of the settings' Redis (nothing connects until the first command); over TLS
    with a ``rediss://`` URL."""
    pw = settings.redis.password
    return redis.Redis.from_url(
        settings.redis_url,
        password=pw.get_secret_value() if pw else None,
        socket_connect_timeout=connect_timeout_s,
        socket_timeout=timeout_s,
        health_check_interval=health_check_s,
        **redis_tls(settings),
    )


def redis_tls(settings: BlazeSettings) -> dict[str, Any]:
    """redis-py's TLS arguments (none unless the URL is ``rediss://``): the server's certificate
    is always verified, against ``redis.ssl_ca_file`` or the system's CAs."""
    r = settings.redis
    if not settings.redis_url.startswith("rediss://"):
        return {}
    out: dict[str, Any] = {"ssl_cert_reqs": "required"}
    if r.ssl_ca_file:
        out["ssl_ca_certs"] = r.ssl_ca_file
    if r.ssl_cert_file:
        out["ssl_certfile"] = r.ssl_cert_file
    if r.ssl_key_file:
        out["ssl_keyfile"] = r.ssl_key_file
    return out
