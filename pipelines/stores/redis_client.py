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


def _status_kwargs(settings: BlazeSettings) -> tuple[str, dict[str, Any]]:
    url = settings.redis.status_url or settings.redis_url
    pw = settings.redis.password
    kwargs: dict[str, Any] = dict(
        password=pw.get_secret_value() if pw else None,
        socket_connect_timeout=5,
        socket_timeout=30,
        **redis_tls(settings, url),
    )
    return url, kwargs


def status_redis_client(
    settings: BlazeSettings, *, health_check_s: int = 30
) -> redis.Redis | redis.RedisCluster:
    """A client of the status store's Redis: ``redis.status_url`` when set (a Redis Cluster
    with ``redis.status_cluster``), else the broker's Redis."""
    url, kwargs = _status_kwargs(settings)
    kwargs["health_check_interval"] = health_check_s
    if settings.redis.status_cluster:
        return redis.RedisCluster.from_url(url, **kwargs)
    return redis.Redis.from_url(url, **kwargs)


def async_status_client(settings: BlazeSettings) -> Any:
    """``status_redis_client`` for asyncio code (``redis.asyncio``)."""
    import redis.asyncio as aioredis

    url, kwargs = _status_kwargs(settings)
    if settings.redis.status_cluster:
        return aioredis.RedisCluster.from_url(url, **kwargs)
    return aioredis.Redis.from_url(url, **kwargs)


def redis_tls(settings: BlazeSettings, url: str | None = None) -> dict[str, Any]:
    """redis-py's TLS arguments (none unless the URL, by default the broker's, is
    ``rediss://``): the server's certificate is always verified, against
    ``redis.ssl_ca_file`` or the system's CAs."""
    r = settings.redis
    if not (url or settings.redis_url).startswith("rediss://"):
        return {}
    out: dict[str, Any] = {"ssl_cert_reqs": "required"}
    if r.ssl_ca_file:
        out["ssl_ca_certs"] = r.ssl_ca_file
    if r.ssl_cert_file:
        out["ssl_certfile"] = r.ssl_cert_file
    if r.ssl_key_file:
        out["ssl_keyfile"] = r.ssl_key_file
    return out
