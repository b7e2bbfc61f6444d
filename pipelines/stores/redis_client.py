"""One way to open a Redis (or Valkey) connection from settings: URL, password, timeouts."""

from __future__ import annotations

from typing import Any

import redis

from pipelines.settings import BlazeSettings


def _kwargs(
    settings: BlazeSettings, url: str, connect_timeout_s: float, timeout_s: float | None
) -> dict[str, Any]:
    """What every client of ``url`` is given: the password, timeouts and TLS arguments."""
    pw = settings.redis.password
    return dict(
        password=pw.get_secret_value() if pw else None,
        socket_connect_timeout=connect_timeout_s,
        socket_timeout=timeout_s,
        **redis_tls(settings, url),
    )


def redis_client(
    settings: BlazeSettings,
    *,
    connect_timeout_s: float = 5,
    timeout_s: float | None = 30,
    health_check_s: int = 0,
) -> redis.Redis:
    """A client of the settings' Redis (nothing connects until the first command); over TLS
    with a ``rediss://`` URL."""
    return redis.Redis.from_url(
        settings.redis_url,
        health_check_interval=health_check_s,
        **_kwargs(settings, settings.redis_url, connect_timeout_s, timeout_s),
    )


def _status_url(settings: BlazeSettings) -> str:
    return settings.redis.status_url or settings.redis_url


def status_redis_client(
    settings: BlazeSettings, *, health_check_s: int = 30
) -> redis.Redis | redis.RedisCluster:
    """A client of the status store's Redis: ``redis.status_url`` when set (a Redis Cluster
    with ``redis.status_cluster``), else the broker's Redis."""
    url = _status_url(settings)
    kwargs = _kwargs(settings, url, 5, 30)
    kwargs["health_check_interval"] = health_check_s
    if settings.redis.status_cluster:
        return redis.RedisCluster.from_url(url, **kwargs)
    return redis.Redis.from_url(url, **kwargs)


def async_status_client(settings: BlazeSettings) -> Any:
    """``status_redis_client`` for asyncio code (``redis.asyncio``)."""
    import redis.asyncio as aioredis

    url = _status_url(settings)
    kwargs = _kwargs(settings, url, 5, 30)
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
