"""Result storage: the ``ResultStore`` contract, an in-memory store and the S3 store.

Each result is one object written with a single PUT, so a reader sees either nothing or the
whole document; writes of a batch run concurrently because one PUT costs a round trip.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import urllib3
from minio import Minio
from minio.error import S3Error

from pipelines.errors import ServiceUnavailable
from pipelines.settings import BlazeSettings


class ResultStore(Protocol):
    """Objects by key; writes of one key are idempotent (same bytes for the same job)."""

    def put_many(self, items: Sequence[tuple[str, bytes, str]]) -> None:
        """Write ``(key, data, content_type)`` items; raises if any write failed."""
        ...

    def get(self, key: str) -> bytes | None: ...

    def existing(self, keys: Iterable[str]) -> set[str]:
        """The subset of ``keys`` that already exist."""
        ...

    def list(self, prefix: str) -> list[str]: ...


class MemoryResultStore:
    """A dict-backed store for unit tests and docs; inspect ``objects`` directly."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def put_many(self, items: Sequence[tuple[str, bytes, str]]) -> None:
        with self._lock:
            for key, data, _ in items:
                self.objects[key] = data

    def get(self, key: str) -> bytes | None:
        return self.objects.get(key)

    def existing(self, keys: Iterable[str]) -> set[str]:
        return {k for k in keys if k in self.objects}

    def list(self, prefix: str) -> list[str]:
        return sorted(k for k in self.objects if k.startswith(prefix))


class S3ResultStore:
    """Results in an S3-compatible bucket (AWS S3, MinIO, SeaweedFS) through the minio SDK."""

    def __init__(self, settings: BlazeSettings) -> None:
        s3 = settings.s3
        self.endpoint = settings.s3_endpoint
        self.bucket = s3.bucket
        self._threads = s3.write_threads
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=5, read=60),
            maxsize=max(10, s3.write_threads),
            retries=urllib3.Retry(
                total=3, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]
            ),
        )
        self.client = Minio(
            self.endpoint,
            access_key=s3.access_key,
            secret_key=s3.secret_key.get_secret_value(),
            secure=s3.secure,
            region=s3.region,
            http_client=http,
        )
        self._pool: ThreadPoolExecutor | None = None

    def _unavailable(self, exc: Exception) -> ServiceUnavailable:
        return ServiceUnavailable("S3", self.endpoint, type(exc).__name__ + ": " + str(exc)[:200])

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

    def _put(self, item: tuple[str, bytes, str]) -> None:
        key, data, ctype = item
        self.client.put_object(self.bucket, key, io.BytesIO(data), len(data), content_type=ctype)

    def put_many(self, items: Sequence[tuple[str, bytes, str]]) -> None:
        try:
            if len(items) <= 1:
                for item in items:
                    self._put(item)
                return
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="s3-put")
            for _ in self._pool.map(self._put, items):
                pass
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._unavailable(exc) from None

    def get(self, key: str) -> bytes | None:
        try:
            resp = self.client.get_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject"):
                return None
            raise self._unavailable(exc) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._unavailable(exc) from None
        try:
            return resp.read()
        finally:
            resp.close()
            resp.release_conn()

    def _exists(self, key: str) -> bool:
        try:
            self.client.stat_object(self.bucket, key)
            return True
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "ResourceNotFound"):
                return False
            raise

    def existing(self, keys: Iterable[str]) -> set[str]:
        keys = list(keys)
        try:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="s3-put")
            found = self._pool.map(self._exists, keys)
            return {k for k, ok in zip(keys, found, strict=True) if ok}
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._unavailable(exc) from None

    def list(self, prefix: str) -> list[str]:
        try:
            objs = self.client.list_objects(self.bucket, prefix=prefix, recursive=True)
            return sorted(o.object_name for o in objs if o.object_name)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._unavailable(exc) from None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
