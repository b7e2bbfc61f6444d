"""One way to open a Redis (or Valkey) connection from settings: URL, password, timeouts."""

from __future__ import annotations

import redis

from pipelines.settings import BlazeSettings


def redis_client(
    settings: BlazeSettings,
    *,
    connect_timeout_s: float = 5,
    timeout_s: float | None = 30,
    health_check_s: int = 0,
) -> redis.Redis:
    """A client of the settings' Redis (nothing connects until the first command)."""
    pw = settings.redis.password
    return redis.Redis.from_url(
        settings.redis_url,
        password=pw.get_secret_value() if pw else None,
        socket_connect_timeout=connect_timeout_s,
        socket_timeout=timeout_s,
        health_check_interval=health_check_s,
    )
