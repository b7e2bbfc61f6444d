"""OpenAI-style files in the bucket: uploads, and the files of batches seen as files.

An upload ``file-<24 hex>`` lies under ``{ns}/files/<id>/``: ``file.json`` (the file object
and its owner) and ``content``. A batch's input, output and error files are files too, named
``file-<batch id>-input|output|errors``, so ``files.content(batch.output_file_id)`` works as
it does against OpenAI.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any, BinaryIO, Literal

from pydantic import BaseModel, ConfigDict

from pipelines.errors import NotFound
from pipelines.settings import BlazeSettings
from pipelines.stores.results import ResultStore

UPLOAD_ID = re.compile(r"^file-[0-9a-f]{24}$")
BATCH_FILE_ID = re.compile(r"^file-(batch_[0-9a-f]{24})-(input|output|errors)$")
BATCH_FILE_NAMES = {"input": "input.jsonl", "output": "output.jsonl", "errors": "errors.jsonl"}
PURPOSES = ("batch", "batch_output")


class FileObject(BaseModel):
    """OpenAI's file object; ``owner`` is stored beside it and never shown."""

    model_config = ConfigDict(extra="ignore")

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"] = "processed"
    expires_at: int | None = None
    status_details: str | None = None
    owner: str | None = None

    def public(self) -> dict[str, Any]:
        return self.model_dump(exclude={"owner"})


def batch_file_id(batch_id: str, which: str) -> str:
    return f"file-{batch_id}-{which}"


class FileStore:
    """Uploaded files of one namespace."""

    def __init__(self, settings: BlazeSettings, store: ResultStore) -> None:
        self.settings = settings
        self.store = store
        self.prefix = f"{settings.namespace}/files/"

    def content_key(self, file_id: str) -> str:
        return f"{self.prefix}{file_id}/content"

    def _meta_key(self, file_id: str) -> str:
        return f"{self.prefix}{file_id}/file.json"

    def create(
        self, data: BinaryIO, size: int, filename: str, purpose: str, owner: str
    ) -> FileObject:
        file_id = f"file-{uuid.uuid4().hex[:24]}"
        obj = FileObject(
            id=file_id,
            bytes=size,
            created_at=int(time.time()),
            filename=filename[:255],
            purpose=purpose,
            owner=owner,
        )
        data.seek(0)
        self.store.put_stream(self.content_key(file_id), data, "application/jsonl")
        body = obj.model_dump_json().encode()
        self.store.put_many([(self._meta_key(file_id), body, "application/json")])
        return obj

    def get(self, file_id: str) -> FileObject:
        """The uploaded file's object; ``NotFound`` if there is none."""
        raw = self.store.get(self._meta_key(file_id)) if UPLOAD_ID.match(file_id) else None
        if raw is None:
            raise NotFound(f"no file {file_id!r}")
        return FileObject.model_validate_json(raw)

    def content(self, file_id: str) -> bytes:
        data = self.store.get(self.content_key(file_id))
        if data is None:
            raise NotFound(f"no content for file {file_id!r}")
        return data

    def delete(self, file_id: str) -> None:
        self.store.delete_many([self.content_key(file_id), self._meta_key(file_id)])

    def list(self, owner: str | None, purpose: str | None = None) -> list[FileObject]:
        """Uploaded files, newest first (of ``owner``, or all for None)."""
        keys = [k for k in self.store.list_keys(self.prefix) if k.endswith("/file.json")]
        docs = self.store.get_many(keys)
        files = [FileObject.model_validate_json(d) for d in docs.values() if d is not None]
        files = [
            f
            for f in files
            if (owner is None or f.owner == owner) and (purpose is None or f.purpose == purpose)
        ]
        return sorted(files, key=lambda f: (f.created_at, f.id), reverse=True)

    def batch_file(
        self, batch_id: str, which: str, created_at: int, owner: str | None
    ) -> FileObject:
        """A batch's input, output or error file as a file object; ``NotFound`` if absent."""
        key = self.settings.openai_batch_prefix(batch_id) + BATCH_FILE_NAMES[which]
        found = [o for o in self.store.scan(key) if o.key == key]
        if not found:
            raise NotFound(f"no file {batch_file_id(batch_id, which)!r}")
        return FileObject(
            id=batch_file_id(batch_id, which),
            bytes=found[0].size,
            created_at=created_at,
            filename=BATCH_FILE_NAMES[which],
            purpose="batch" if which == "input" else "batch_output",
            owner=owner,
        )

    def batch_content(self, batch_id: str, which: str) -> bytes:
        key = self.settings.openai_batch_prefix(batch_id) + BATCH_FILE_NAMES[which]
        data = self.store.get(key)
        if data is None:
            raise NotFound(f"no file {batch_file_id(batch_id, which)!r}")
        return data
