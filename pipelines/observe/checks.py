"""Readiness checks of the services a process needs: each answers None when fine, else why not.

Each check opens its own short-timeout connection: a probe must answer within a second or two
even when the service hangs, and must not share a client with the process's own work.
"""

from __future__ import annotations

import socket

import redis
import urllib3
from minio import Minio

from pipelines.observe.probes import Check
from pipelines.settings import BlazeSettings
from pipelines.stores.redis_client import redis_client
from pipelines.stores.results_s3 import s3_tls

TIMEOUT_S = 2.0


def redis_check(settings: BlazeSettings, timeout_s: float = TIMEOUT_S) -> Check:
    client = redis_client(settings, connect_timeout_s=timeout_s, timeout_s=timeout_s)

    def check() -> str | None:
        try:
            client.ping()
        except redis.RedisError as exc:
            return f"{settings.redis_url.split('@')[-1]} unreachable: {type(exc).__name__}"
        return None

    return check


def kafka_check(settings: BlazeSettings, timeout_s: float = TIMEOUT_S) -> Check:
    """A TCP connection to any bootstrap server (the process's own client does the protocol)."""
    servers = [s.strip() for s in settings.kafka_bootstrap.split(",") if s.strip()]

    def check() -> str | None:
        errors = []
        for server in servers:
            host, _, port = server.rpartition(":")
            try:
                socket.create_connection((host.strip("[]"), int(port)), timeout_s).close()
                return None
            except (OSError, ValueError) as exc:
                errors.append(f"{server}: {type(exc).__name__}")
        return "unreachable: " + "; ".join(errors)

    return check


def s3_check(settings: BlazeSettings, timeout_s: float = TIMEOUT_S) -> Check:
    s3 = settings.s3
    endpoint = settings.s3_endpoint
    if not s3.access_key:
        return lambda: f"{endpoint}: credentials not set"
    client = Minio(
        endpoint,
        access_key=s3.access_key,
        secret_key=s3.secret_key.get_secret_value(),
        secure=s3.secure,
        region=s3.region,
        http_client=urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s),
            retries=False,
            **s3_tls(settings),
        ),
    )

    def check() -> str | None:
        try:
            if not client.bucket_exists(s3.bucket):
                return f"{endpoint}: bucket {s3.bucket!r} does not exist"
        except Exception as exc:  # any failure to answer is "not ready", named
            return f"{endpoint} unreachable: {type(exc).__name__}"
        return None

    return check


def service_checks(settings: BlazeSettings, *names: str) -> dict[str, Check]:
    """Checks of the named services (``kafka``, ``redis``, ``s3``)."""
    makers = {"kafka": kafka_check, "redis": redis_check, "s3": s3_check}
    return {name: makers[name](settings) for name in names}
