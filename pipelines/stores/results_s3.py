"""The S3 ``ResultStore``: AWS S3, MinIO or SeaweedFS.

Writes of a batch run concurrently (one PUT costs a round trip); first-writer-wins writes use
``If-None-Match: *``; objects above ``multipart_threshold_mb`` go up in parts. Single-object
PUTs, GETs and HEADs go through obstore (``s3_objects``: a third of minio's CPU per request);
bucket admin, listing, copies, deletes, presigned URLs and multipart uploads through minio.

Object stores throttle hot prefixes (AWS S3 answers ``503 SlowDown`` past about 3,500 writes a
second per prefix): a request answered 500/502/503/504 is sent again up to ``s3.retries``
times, waiting a random time up to ``retry_backoff_s`` doubled per attempt ("full jitter", so
throttled writers spread out instead of returning together) or what ``Retry-After`` asks.
urllib3's own backoff retries the first failure at once and adds at most a fixed jitter, hence
``_Backoff``. Single-object requests retry in obstore with its own jittered backoff (see
``s3_objects``). After the last retry the store raises ``ServiceUnavailable`` and the worker
retries the whole (idempotent) batch later.

With ``s3.sse`` every object Blaze writes asks for server-side encryption (SSE-S3 or SSE-KMS).
"""

from __future__ import annotations

import io
import logging
import os
import random
import re
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO

import urllib3
from minio import Minio
from minio.commonconfig import CopySource
from minio.deleteobjects import DeleteObject
from minio.error import S3Error
from minio.sse import Sse, SseKMS, SseS3
from obstore.exceptions import BaseError

from pipelines.errors import ConfigError, ServiceUnavailable
from pipelines.settings import BlazeSettings
from pipelines.stores.results import Item, ObjectInfo
from pipelines.stores.s3_objects import (
    MISSING,
    ConditionalUnsupported,
    MinioObjects,
    ObjectClient,
    ObstoreObjects,
    obstore_usable,
)

log = logging.getLogger(__name__)

PART_SIZE = 8 << 20
RETRY_STATUSES = (500, 502, 503, 504)
# what the store's calls raise when the service fails them (after their retries)
_FAILED = (S3Error, BaseError, urllib3.exceptions.HTTPError, OSError)


_OBSTORE_FAILURE = re.compile(
    r"performing (?P<op>[A-Z]+) \w+://[^/\s]+/(?P<path>\S+) in [^,]+, after (?P<n>\d+) retries"
    r".*?status code: (?P<status>\d{3}[A-Za-z ]*)"
)


def _reason(exc: Exception) -> str:
    """What failed, in one line: obstore's errors carry a page of debug text after it."""
    text = str(exc).split("\n", 1)[0]
    found = _OBSTORE_FAILURE.search(text)
    if found:
        status = found["status"].strip()
        return f"{found['op']} {found['path']} answered {status} after {found['n']} retries"
    return f"{type(exc).__name__}: {text[:200]}"


class _Backoff(urllib3.Retry):
    """urllib3's retries with full-jitter exponential waits (the module docstring)."""

    def get_backoff_time(self) -> float:
        tries = len(self.history)
        if tries == 0:
            return 0.0
        cap = min(self.backoff_max, self.backoff_factor * 2 ** (tries - 1))
        return random.uniform(0, cap)


def retry_policy(settings: BlazeSettings) -> urllib3.Retry:
    """How the store's HTTP client retries (``s3.retries`` and its backoff)."""
    s3 = settings.s3
    return _Backoff(
        total=s3.retries,
        backoff_factor=s3.retry_backoff_s,
        backoff_max=s3.retry_backoff_max_s,
        status_forcelist=RETRY_STATUSES,
        respect_retry_after_header=True,
    )


def s3_tls(settings: BlazeSettings) -> dict[str, Any]:
    """urllib3's arguments for an S3 client: with ``s3.secure`` the server's certificate is
    verified, against ``s3.ca_file`` or the system's CAs."""
    s3 = settings.s3
    if not s3.secure:
        return {}
    out: dict[str, Any] = {"cert_reqs": "CERT_REQUIRED"}
    if s3.ca_file:
        out["ca_certs"] = s3.ca_file
    return out


def encryption(settings: BlazeSettings) -> Sse | None:
    """The server-side encryption ``s3.sse`` asks for, or None."""
    s3 = settings.s3
    if s3.sse == "s3":
        return SseS3()
    if s3.sse == "kms":
        return SseKMS(s3.sse_kms_key_id, {})
    return None


class S3ResultStore:
    """Results in an S3-compatible bucket (AWS S3, MinIO, SeaweedFS) through the minio SDK."""

    def __init__(self, settings: BlazeSettings) -> None:
        s3 = settings.s3
        self.endpoint = settings.s3_endpoint
        if not s3.access_key or not s3.secret_key.get_secret_value():
            where = f"{settings.stack.state_dir}/secrets.json"
            raise ConfigError(
                f"S3 credentials for {self.endpoint} are not set: set BLAZE_S3__ACCESS_KEY and "
                f"BLAZE_S3__SECRET_KEY, or run `blaze stack up` (it writes them to {where})",
                stage="settings",
            )
        self.bucket = s3.bucket
        self._threads = s3.write_threads
        self._multipart_bytes = s3.multipart_threshold_mb << 20
        self._conditional = s3.conditional_writes
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=5, read=60),
            maxsize=max(10, s3.write_threads),
            retries=retry_policy(settings),
            **s3_tls(settings),
        )
        self.sse = encryption(settings)
        # the headers every write carries (SSE as headers: minio's ``sse=`` refuses SSE-KMS
        # over plain HTTP, which a local KMS-backed store may serve)
        self._sse_headers: dict[str, str] = dict(self.sse.headers()) if self.sse else {}
        self.client = Minio(
            self.endpoint,
            access_key=s3.access_key,
            secret_key=s3.secret_key.get_secret_value(),
            secure=s3.secure,
            region=s3.region,
            http_client=http,
        )
        self._obstore = ObstoreObjects(settings)
        self._minio = MinioObjects(self.client, self.bucket, self._sse_headers)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = 0
        self._pool_lock = threading.Lock()

    def _sse_metadata(self) -> dict[str, str | list[str] | tuple[str]] | None:
        return dict(self._sse_headers) if self._sse_headers else None

    def _unavailable(self, exc: Exception) -> ServiceUnavailable:
        return ServiceUnavailable("S3", self.endpoint, _reason(exc))

    @property
    def objects(self) -> ObjectClient:
        """The client for single-object requests (obstore, minio in a child forked after it)."""
        return self._obstore if obstore_usable() else self._minio

    def _workers(self) -> ThreadPoolExecutor:
        with self._pool_lock:  # a worker's batches in hand share the store
            if self._pool is None or self._pool_pid != os.getpid():
                # a forked child has the parent's pool but not its threads
                self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="s3")
                self._pool_pid = os.getpid()
            return self._pool

    def ensure_bucket(self) -> None:
        """Create the bucket if it is missing (harmless when it exists)."""
        try:
            if not self.client.bucket_exists(self.bucket):
                self.client.make_bucket(self.bucket)
        except S3Error as exc:
            if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise self._unavailable(exc) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._unavailable(exc) from None

    def _put(self, item: Item, if_absent: bool) -> bool:
        """Write one object; False when ``if_absent`` and the key was taken."""
        key, data, ctype = item
        if len(data) > self._multipart_bytes:
            # minio's multipart path takes no precondition: check first (best effort).
            if if_absent and self._exists(key):
                return False
            self.client.put_object(
                self.bucket,
                key,
                io.BytesIO(data),
                len(data),
                ctype,
                metadata=self._sse_metadata(),
                part_size=PART_SIZE,
            )
            return True
        if if_absent and not self._conditional:
            if self._exists(key):
                return False
            if_absent = False
        try:
            return self.objects.put(key, data, ctype, create=if_absent)
        except ConditionalUnsupported:
            log.warning("%s does not support conditional writes; checking before writing", self)
            self._conditional = False
            return self._put(item, if_absent)

    def put_many(self, items: Sequence[Item], *, if_absent: bool = False) -> set[str]:
        try:
            if len(items) <= 1:
                written = [self._put(item, if_absent) for item in items]
            else:
                written = list(self._workers().map(lambda i: self._put(i, if_absent), items))
        except _FAILED as exc:
            raise self._unavailable(exc) from None
        return {item[0] for item, ok in zip(items, written, strict=True) if not ok}

    def _copy(self, pair: tuple[str, str]) -> bool:
        source, dest = pair
        try:
            self.client.copy_object(
                self.bucket, dest, CopySource(self.bucket, source), sse=self.sse
            )
            return True
        except S3Error as exc:
            if exc.code in MISSING:
                return False
            raise

    def copy_many(self, pairs: Sequence[tuple[str, str]]) -> set[str]:
        try:
            done = list(self._workers().map(self._copy, pairs))
        except _FAILED as exc:
            raise self._unavailable(exc) from None
        return {src for (src, _), ok in zip(pairs, done, strict=True) if not ok}

    def put_stream(self, key: str, data: BinaryIO, content_type: str) -> None:
        try:
            self.client.put_object(
                self.bucket,
                key,
                data,
                -1,
                content_type=content_type,
                metadata=self._sse_metadata(),
                part_size=PART_SIZE,
            )
        except _FAILED as exc:
            raise self._unavailable(exc) from None

    def get(self, key: str) -> bytes | None:
        try:
            return self.objects.get(key)
        except _FAILED as exc:
            raise self._unavailable(exc) from None

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes | None]:
        if len(keys) <= 1:
            return {k: self.get(k) for k in keys}
        return dict(zip(keys, self._workers().map(self.get, keys), strict=True))

    def _exists(self, key: str) -> bool:
        return self.objects.exists(key)

    def existing(self, keys: Iterable[str]) -> set[str]:
        keys = list(keys)
        try:
            found = self._workers().map(self._exists, keys)
            return {k for k, ok in zip(keys, found, strict=True) if ok}
        except _FAILED as exc:
            raise self._unavailable(exc) from None

    def list_keys(self, prefix: str) -> list[str]:
        return [o.key for o in self.scan(prefix)]

    def scan(self, prefix: str) -> list[ObjectInfo]:
        try:
            objs = self.client.list_objects(self.bucket, prefix=prefix, recursive=True)
            return sorted(
                (
                    ObjectInfo(o.object_name, o.size or 0, o.last_modified or datetime.now(UTC))
                    for o in objs
                    if o.object_name
                ),
                key=lambda o: o.key,
            )
        except _FAILED as exc:
            raise self._unavailable(exc) from None

    def delete_many(self, keys: Sequence[str]) -> int:
        try:
            for start in range(0, len(keys), 1000):  # the DeleteObjects limit per request
                batch = [DeleteObject(k) for k in keys[start : start + 1000]]
                errors = list(self.client.remove_objects(self.bucket, batch))
                if errors:
                    first = errors[0]
                    raise ServiceUnavailable(
                        "S3", self.endpoint, f"delete {first.name}: {first.code} {first.message}"
                    )
        except _FAILED as exc:
            raise self._unavailable(exc) from None
        return len(keys)

    def presign(self, key: str, expires_s: int) -> str:
        return self.client.presigned_get_object(
            self.bucket, key, expires=timedelta(seconds=expires_s)
        )

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __repr__(self) -> str:
        return f"S3ResultStore({self.endpoint}/{self.bucket})"
