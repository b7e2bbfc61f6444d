"""The result store's single-object requests (PUT, GET, HEAD): obstore, minio in a fork.

A worker writes one object per job (or per batch), and the SDK, the cache and the OpenAI
files read them back one by one. Measured on the dev machine (3,000 PUTs of 330 bytes from 16
threads against the embedded SeaweedFS): the minio SDK spends 1.14-1.18 CPU ms per PUT in
Python (SigV4 signing, headers, urllib3), obstore (the Rust ``object_store`` crate) 0.41-0.43,
and SeaweedFS itself 1.56 against 1.41-1.42. The rest of the store (bucket admin, listing,
copies, deletes, presigned URLs, multipart streams) stays on minio, which those paths are
tested with.

obstore runs its requests on a Tokio runtime whose threads a forked child does not have: in a
process forked after obstore was used, every obstore call blocks for good (measured: a new
store in the child as well). ``os.register_at_fork`` marks such a child, and the result store
uses ``MinioObjects`` for the same requests there.

The settings map one to one: ``s3.secure`` and ``s3.ca_file`` (PEM, added to the trusted
roots), ``s3.sse`` (SSE-S3 or SSE-KMS headers on every PUT), ``If-None-Match: *`` for
first-writer-wins, and ``s3.retries`` of a request answered 5xx with object_store's backoff:
the first wait is ``retry_backoff_s``, each next one random between that and twice the
previous ("decorrelated jitter"), capped at ``retry_backoff_max_s``.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import obstore
from minio import Minio
from minio.error import S3Error
from obstore.exceptions import AlreadyExistsError, BaseError, NotSupportedError, PreconditionError
from obstore.store import S3Store

from pipelines.errors import ConfigError
from pipelines.settings import BlazeSettings

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig, S3Config

MISSING = ("NoSuchKey", "NoSuchObject", "ResourceNotFound")
_TAKEN = ("PreconditionFailed", "ConditionalRequestConflict")


class ConditionalUnsupported(Exception):
    """The store answered a conditional PUT with NotImplemented."""


class ObjectClient(Protocol):
    """One object per request: the result store's hot path."""

    def put(self, key: str, data: bytes, content_type: str, *, create: bool) -> bool:
        """Write the object; with ``create`` only if the key is free (False when taken)."""

    def get(self, key: str) -> bytes | None: ...

    def exists(self, key: str) -> bool: ...


class _Fork:
    used = False  # this process has run obstore's runtime
    broken = False  # forked from a process that had: obstore would block here


def _after_fork_in_child() -> None:
    _Fork.broken = _Fork.broken or _Fork.used


os.register_at_fork(after_in_child=_after_fork_in_child)


def obstore_usable() -> bool:
    """False in a process forked after obstore ran (the module docstring)."""
    return not _Fork.broken


class ObstoreObjects:
    def __init__(self, settings: BlazeSettings) -> None:
        self.store = object_store(settings)

    def put(self, key: str, data: bytes, content_type: str, *, create: bool) -> bool:
        _Fork.used = True
        attributes: Any = {"Content-Type": content_type}
        try:
            obstore.put(
                self.store,
                key,
                data,
                attributes=attributes,
                mode="create" if create else "overwrite",
                use_multipart=False,
            )
            return True
        except (AlreadyExistsError, PreconditionError):
            return False
        except BaseError as exc:
            # 409 ConditionalRequestConflict: another writer's PUT of the key is in flight
            if "ConditionalRequestConflict" in str(exc):
                return False
            if isinstance(exc, NotSupportedError) or "NotImplemented" in str(exc):
                raise ConditionalUnsupported(str(exc).split("\n", 1)[0]) from None
            raise

    def get(self, key: str) -> bytes | None:
        _Fork.used = True
        try:
            return obstore.get(self.store, key).bytes().to_bytes()
        except FileNotFoundError:
            return None

    def exists(self, key: str) -> bool:
        _Fork.used = True
        try:
            obstore.head(self.store, key)
            return True
        except FileNotFoundError:
            return False


class MinioObjects:
    def __init__(self, client: Minio, bucket: str, sse_headers: dict[str, str]) -> None:
        self.client, self.bucket, self.sse_headers = client, bucket, sse_headers

    def put(self, key: str, data: bytes, content_type: str, *, create: bool) -> bool:
        headers: dict[str, str | list[str] | tuple[str]] = {
            "Content-Type": content_type,
            **self.sse_headers,
        }
        if create:
            headers["If-None-Match"] = "*"
        try:
            # put_object() would turn If-None-Match into user metadata; the plain PUT keeps it.
            self.client._put_object(self.bucket, key, data, headers)
            return True
        except S3Error as exc:
            if exc.code in _TAKEN:
                return False
            if exc.code == "NotImplemented" and create:
                raise ConditionalUnsupported(exc.message or exc.code) from None
            raise

    def get(self, key: str) -> bytes | None:
        try:
            resp = self.client.get_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in MISSING:
                return None
            raise
        try:
            return resp.read()
        finally:
            resp.close()
            resp.release_conn()

    def exists(self, key: str) -> bool:
        try:
            self.client.stat_object(self.bucket, key)
            return True
        except S3Error as exc:
            if exc.code in MISSING:
                return False
            raise


def object_store(settings: BlazeSettings) -> S3Store:
    """An obstore client for ``settings.s3`` (path-style, the bucket of the settings)."""
    s3 = settings.s3
    scheme = "https" if s3.secure else "http"
    config: S3Config = {
        "endpoint": f"{scheme}://{settings.s3_endpoint}",
        "access_key_id": s3.access_key,
        "secret_access_key": s3.secret_key.get_secret_value(),
        "region": s3.region,
        "virtual_hosted_style_request": False,
        "conditional_put": "etag",  # PutMode.Create sends If-None-Match: *
    }
    if s3.sse == "s3":
        config["server_side_encryption"] = "AES256"
    elif s3.sse == "kms":
        config["server_side_encryption"] = "aws:kms"
        config["sse_kms_key_id"] = s3.sse_kms_key_id
    client: ClientConfig = {
        "connect_timeout": timedelta(seconds=5),
        "timeout": timedelta(seconds=60),
        "pool_max_idle_per_host": str(max(10, s3.write_threads)),
    }
    if s3.secure and s3.ca_file:
        try:
            client["root_certificate"] = Path(s3.ca_file).read_text()
        except OSError as exc:
            raise ConfigError(
                f"BLAZE_S3__CA_FILE: cannot read {s3.ca_file}: {exc.strerror}", stage="settings"
            ) from None
    if not s3.secure:
        client["allow_http"] = True
    retry: RetryConfig = {
        "max_retries": s3.retries,
        "backoff": {
            "init_backoff": timedelta(seconds=s3.retry_backoff_s),
            "max_backoff": timedelta(seconds=s3.retry_backoff_max_s),
            "base": 2,
        },
        # the retries' own waits bound the time, not a separate clock
        "retry_timeout": timedelta(seconds=s3.retry_backoff_max_s * (s3.retries + 1) + 60),
    }
    return S3Store(s3.bucket, config=config, client_options=client, retry_config=retry)
