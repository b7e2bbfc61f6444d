"""The producer SDK: submit jobs to Kafka, then poll their status and read their results."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError

from pipelines.errors import JobTimeout
from pipelines.jobs import AnyJob
from pipelines.kafka import ensure_topics, make_producer, unavailable
from pipelines.results import LLMResult
from pipelines.settings import BlazeSettings
from pipelines.status import JobState, JobStatus, RedisStatusStore, StatusStore, StatusUpdate
from pipelines.storage import ResultStore, S3ResultStore

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class JobHandle:
    """A submitted job: its id, the key of its result, and the client that can poll it."""

    job_id: str
    result_key: str
    client: Client

    def status(self) -> JobStatus | None:
        return self.client.status([self.job_id])[self.job_id]

    def wait(self, timeout: float | None = None) -> JobStatus:
        return self.client.wait([self.job_id], timeout=timeout)[self.job_id]

    def result(self) -> LLMResult | None:
        return self.client.result(self.job_id)


class Client:
    """Blaze from a producer's side. Create once and reuse: it holds a Kafka producer."""

    def __init__(
        self,
        settings: BlazeSettings,
        *,
        status_store: StatusStore | None = None,
        result_store: ResultStore | None = None,
    ) -> None:
        self.settings = settings
        self._status = status_store
        self._results = result_store
        self._producer: KafkaProducer | None = None
        self._topics_ready: set[str] = set()

    # -- lazily built connections --------------------------------------------------------
    @property
    def status_store(self) -> StatusStore:
        if self._status is None:
            self._status = RedisStatusStore(self.settings)
        return self._status

    @property
    def result_store(self) -> ResultStore:
        if self._results is None:
            self._results = S3ResultStore(self.settings)
        return self._results

    def _topic(self, kind: str) -> str:
        topic = self.settings.jobs_topic(kind)
        if topic not in self._topics_ready:
            ensure_topics(self.settings, [topic, self.settings.dead_letter_topic])
            self._topics_ready.add(topic)
        return topic

    def _get_producer(self) -> KafkaProducer:
        if self._producer is None:
            self._producer = make_producer(self.settings)
        return self._producer

    # -- producing -----------------------------------------------------------------------
    def submit(self, job: AnyJob) -> JobHandle:
        """Publish one job; returns once the broker acknowledged it."""
        return self.submit_many([job])[0]

    def submit_many(
        self,
        jobs: Sequence[AnyJob],
        progress: Progress | None = None,
        chunk: int = 500,
        restart: bool = False,
    ) -> list[JobHandle]:
        """Publish jobs in batched sends (acks=all, key = job id) and mark them queued.

        Returns after every job is acknowledged by the broker; raises ``ServiceUnavailable``
        if any is not, naming the broker.
        """
        producer = self._get_producer()
        if restart:  # replayed jobs start a fresh life: their old terminal state must go
            self.status_store.reset([j.job_id for j in jobs])
        handles: list[JobHandle] = []
        for start in range(0, len(jobs), chunk):
            part = jobs[start : start + chunk]
            try:
                futures = [
                    producer.send(
                        self._topic(job.kind),
                        key=job.job_id.encode(),
                        value=job.model_dump_json(exclude_defaults=False).encode(),
                    )
                    for job in part
                ]
                producer.flush(timeout=60)
                for fut in futures:
                    fut.get(timeout=60)
            except KafkaError as exc:
                raise unavailable(self.settings, exc) from None
            now = time.time()
            self.status_store.update(
                [StatusUpdate(j.job_id, JobState.QUEUED, at=now) for j in part]
            )
            handles.extend(
                JobHandle(j.job_id, self.settings.result_key(j.job_id), self) for j in part
            )
            if progress:
                progress(len(handles), len(jobs))
        return handles

    # -- polling -------------------------------------------------------------------------
    def status(self, job_ids: Iterable[str]) -> dict[str, JobStatus | None]:
        return self.status_store.get(job_ids)

    def wait(
        self,
        job_ids: Sequence[str],
        timeout: float | None = None,
        progress: Progress | None = None,
        poll_s: float = 0.25,
    ) -> dict[str, JobStatus]:
        """Block until every job is in a terminal state; raises ``JobTimeout`` past ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        done: dict[str, JobStatus] = {}
        pending = list(dict.fromkeys(job_ids))
        while True:
            for jid, st in self.status(pending).items():
                if st is not None and st.state.terminal:
                    done[jid] = st
            pending = [j for j in pending if j not in done]
            if progress:
                progress(len(done), len(done) + len(pending))
            if not pending:
                return done
            if deadline is not None and time.monotonic() >= deadline:
                raise JobTimeout(
                    f"{len(pending)} of {len(job_ids)} jobs not finished after {timeout}s",
                    pending=pending,
                )
            time.sleep(poll_s)

    def result(self, job_id: str) -> LLMResult | None:
        """The job's result document from the bucket, or None while it has none."""
        raw = self.result_store.get(self.settings.result_key(job_id))
        return None if raw is None else LLMResult.model_validate_json(raw)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=10)
            self._producer = None
        close: Any = getattr(self._results, "close", None)
        if callable(close):
            close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_jobs_file(path: str, defaults: dict[str, Any]) -> list[dict[str, Any]]:
    """Read a JSONL file of jobs (or plain prompts); raises ``ConfigError`` naming the line."""
    from pipelines.errors import ConfigError

    rows: list[dict[str, Any]] = []
    try:
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as exc:
                    raise ConfigError(f"{path}:{n}: not valid JSON ({exc})") from None
                if isinstance(row, str):
                    row = {"prompt": row}
                if not isinstance(row, dict):
                    raise ConfigError(f"{path}:{n}: expected a JSON object or string")
                rows.append({**defaults, **row})
    except OSError as exc:
        raise ConfigError(f"cannot read jobs file {path}: {exc.strerror}") from None
    return rows
