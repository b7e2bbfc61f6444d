"""The producer SDK: submit jobs to Kafka, then poll their status and read their results."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from kafka import KafkaProducer
from kafka.errors import KafkaError

from pipelines.errors import ConfigError, JobTimeout
from pipelines.jobs import SENT_WITH_HEADER, AnyJob, job_group
from pipelines.kafka import ensure_topics, make_producer, unavailable
from pipelines.observe import trace
from pipelines.observe.spans import Spans
from pipelines.results import RESULT_TYPES, AnyResult, DiffusionResult, parse_result
from pipelines.settings import BlazeSettings
from pipelines.stores import connect
from pipelines.stores.batch_results import parse_loc, read_results
from pipelines.stores.results import ResultStore
from pipelines.stores.status import GroupsDone, JobState, JobStatus, StatusStore, StatusUpdate

Progress = Callable[[int, int], None]
WAIT_FIRST, WAIT_WINDOW = 32, 256  # jobs whose state a wait's poll reads first, and at most
# in one step after that (steps double while most of what they read had ended)
SEND_LINGER_MS = 1000  # longer than any chunk takes to add: a chunk leaves whole at its flush


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

    def result(self) -> AnyResult | None:
        return self.client.result(self.job_id)


RERUNNABLE = frozenset({JobState.FAILED, JobState.DEAD, JobState.CANCELLED})


@dataclass(frozen=True)
class Resubmitted:
    """What ``Client.resubmit`` did with each job: submitted as new (Blaze held no state for
    it), restarted (it had failed, died or was cancelled), or kept with the state it has."""

    new: list[JobHandle]
    restarted: list[JobHandle]
    kept: dict[str, JobState]


class Client:
    """Blaze from a producer's side. Create once and reuse: it holds a Kafka producer.

    Args:
        settings: Where Kafka, Redis and S3 are.
        status_store: The job status store (default: Redis from settings).
        result_store: The result store (default: S3 from settings).
        on_groups_done: Hears of job groups whose last job a ``cancel`` settled (the
            composition root hands in the OpenAI batch finalizer here).
    """

    def __init__(
        self,
        settings: BlazeSettings,
        *,
        status_store: StatusStore | None = None,
        result_store: ResultStore | None = None,
        on_groups_done: GroupsDone | None = None,
    ) -> None:
        self.settings = settings
        self._status = status_store
        self._results = result_store
        self.on_groups_done = on_groups_done
        self._producer: KafkaProducer | None = None
        self._topics_ready: set[str] = set()
        self._spans: Spans | None = None

    @property
    def spans(self) -> Spans:
        """OpenTelemetry spans of this producer (a no-op unless configured)."""
        if self._spans is None:
            self._spans = Spans(self.settings, "blaze-producer")
        return self._spans

    # -- lazily built connections --------------------------------------------------------
    @property
    def status_store(self) -> StatusStore:
        if self._status is None:
            self._status = connect.status_store(self.settings)
        return self._status

    @property
    def result_store(self) -> ResultStore:
        if self._results is None:
            self._results = connect.result_store(self.settings)
        return self._results

    def _topic(self, kind: str) -> str:
        topic = self.settings.jobs_topic(kind)
        if topic not in self._topics_ready:
            ensure_topics(self.settings, [topic, self.settings.dead_letter_topic])
            self._topics_ready.add(topic)
        return topic

    def _get_producer(self) -> KafkaProducer:
        if self._producer is None:
            # every send ends in a flush, so linger only decides how a chunk is cut: not in
            # 5 ms slices while the loop is still adding records, but all of it at the flush
            self._producer = make_producer(self.settings, linger_ms=SEND_LINGER_MS)
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
        together: int | None = None,
        traceparent: str | Mapping[str, str] | None = None,
    ) -> list[JobHandle]:
        """Publish jobs in batched sends (acks=all, key = job id) and mark them queued.

        Jobs go to the partition their key hashes to; with ``together = k`` every job of this
        call goes to partition ``k mod n`` of its topic instead (one record batch per topic:
        the gateway's small rounds cost the broker one write each, not one per partition).

        Returns after every job is acknowledged by the broker; raises ``ServiceUnavailable``
        if any is not, naming the broker. Jobs are marked queued *before* they are sent, so
        no later state (or status event) can precede it and a job's group is known whatever
        stage settles it; if the send fails, those marks are removed again.

        Each job carries a W3C ``traceparent`` header, a hop of the caller's trace when given
        (e.g. the HTTP request's; or one per job id), else of a new trace for this call; with
        OpenTelemetry configured, of this call's ``blaze.submit`` span.
        """
        self._get_producer()  # a broker that cannot be reached fails here, before any mark
        if restart:  # replayed jobs start a fresh life: their old terminal state must go
            self.status_store.reset([j.job_id for j in jobs])
            self.result_store.delete_many([self.settings.result_key(j.job_id) for j in jobs])
        handles: list[JobHandle] = []
        if traceparent is None:  # one trace per call: its jobs share it, each with its own span
            traceparent = trace.new_traceparent()
        for start in range(0, len(jobs), chunk):
            part = jobs[start : start + chunk]
            self.status_store.update([_queued(j, time.time()) for j in part])
            self.status_store.flush_events()  # "queued" is out before a consumer can batch it
            # how many jobs travel together: the consumer lets a quiet batch leave early only
            # once it holds them all (or is full), so a burst never leaves its first piece alone
            sent_with = [(SENT_WITH_HEADER, str(len(part)).encode())]
            single = traceparent if isinstance(traceparent, str) else None
            links = (
                [] if isinstance(traceparent, str) else list(dict.fromkeys(traceparent.values()))
            )
            with self.spans.span("blaze.submit", single, links, jobs=len(part)) as own:
                parents = own or traceparent
                self._send(part, parents, together, sent_with)
            handles.extend(
                JobHandle(j.job_id, self.settings.result_key(j.job_id), self) for j in part
            )
            if progress:
                progress(len(handles), len(jobs))
        return handles

    def resubmit(self, jobs: Sequence[AnyJob]) -> Resubmitted:
        """Submit jobs again under their own ids, rerunning only what did not succeed.

        A job that failed, died or was cancelled starts a fresh life (``restart``: its old
        state and result object go); a job Blaze holds no state for is submitted as new (an
        object already under its key stays: first writer wins). A job that succeeded, or is
        queued, batched or running, is kept as it is: resubmitting it would delete a result or
        run it twice. Dead-letter replays and retried pipeline steps go through here."""
        before = self.status(j.job_id for j in jobs)
        fresh = [j for j in jobs if before[j.job_id] is None]
        again = [j for j in jobs if (st := before[j.job_id]) and st.state in RERUNNABLE]
        kept = {
            j.job_id: st.state
            for j in jobs
            if (st := before[j.job_id]) is not None and st.state not in RERUNNABLE
        }
        return Resubmitted(
            self.submit_many(fresh) if fresh else [],
            self.submit_many(again, restart=True) if again else [],
            kept,
        )

    def _send(
        self,
        part: Sequence[AnyJob],
        parents: str | Mapping[str, str],
        together: int | None,
        sent_with: list[tuple[str, bytes]],
    ) -> None:
        """Send one chunk and wait for the broker's acknowledgement of every message."""
        producer = self._get_producer()
        try:
            places = {k: self._placement(k, together) for k in {j.kind for j in part}}
            futures = [
                producer.send(
                    self._topic(job.kind),
                    key=job.job_id.encode(),
                    value=job.model_dump_json(exclude_defaults=False).encode(),
                    headers=[*sent_with, (trace.HEADER, hop(parents, job.job_id).encode())],
                    **places[job.kind],
                )
                for job in part
            ]
            producer.flush(timeout=60)
            for fut in futures:
                fut.get(timeout=60)
        except KafkaError as exc:
            self.status_store.reset([j.job_id for j in part])
            raise unavailable(self.settings, exc) from None

    def _placement(self, kind: str, together: int | None) -> dict[str, int]:
        """``send`` arguments that place a job: by key (none), or the call's one partition."""
        if together is None:
            return {}
        parts = sorted(self._get_producer().partitions_for(self._topic(kind)) or [])
        return {"partition": parts[together % len(parts)]} if parts else {}

    # -- polling -------------------------------------------------------------------------
    def status(self, job_ids: Iterable[str]) -> dict[str, JobStatus | None]:
        return self.status_store.get(job_ids)

    def _ended(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        """The whole status of each job that reached a terminal state.

        Polls the state field alone (cheap) and reads whole statuses only of the jobs that
        ended, so waiting on thousands of jobs costs little CPU beside the workers.
        """
        ended = [j for j, st in self.status_store.states(job_ids).items() if st and st.terminal]
        if not ended:
            return {}
        return {j: st for j, st in self.status(ended).items() if st is not None}

    def _ended_front(
        self, pending: Sequence[str], first: int = WAIT_FIRST, most: int = WAIT_WINDOW
    ) -> tuple[dict[str, JobStatus], int]:
        """Ended jobs from the front of ``pending`` and how many were looked at: ``first``
        jobs, then windows twice as large up to ``most``, going on only while at least half
        of a window ended. A poll reads ``first`` jobs when nothing new ended (the oldest
        pending job has not) and about twice the jobs that ended since the last poll
        otherwise, not every pending job (100,000 of them took 1.1 s of client CPU per
        poll; a 256-job wait polled 10 times a second read all 256 each time)."""
        found: dict[str, JobStatus] = {}
        start, size = 0, first
        while start < len(pending):
            part = pending[start : start + size]
            ended = self._ended(part)
            found.update(ended)
            start += len(part)
            if 2 * len(ended) < len(part):
                break
            size = min(2 * size, most)
        return found, start

    def wait(
        self,
        job_ids: Sequence[str],
        timeout: float | None = None,
        progress: Progress | None = None,
        poll_s: float = 0.25,
    ) -> dict[str, JobStatus]:
        """Block until every job is in a terminal state; raises ``JobTimeout`` past ``timeout``.

        Jobs are looked at oldest first (see ``_ended_front``): the return comes the poll
        after the last job ends, as before, while ``progress`` may count a job that ended far
        out of order (a priority job behind a backlog) a few polls late.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        done: dict[str, JobStatus] = {}
        pending = list(dict.fromkeys(job_ids))
        last = False  # past the deadline: one more poll reads every job, so the error names
        while True:  # only the jobs truly pending
            if last:  # one step over every pending job
                ended, seen = self._ended_front(pending, len(pending), len(pending))
            else:
                ended, seen = self._ended_front(pending)
            done.update(ended)
            pending = [j for j in pending[:seen] if j not in ended] + pending[seen:]
            if progress:
                progress(len(done), len(done) + len(pending))
            if not pending:
                return done
            if last:
                raise JobTimeout(
                    f"{len(pending)} of {len(job_ids)} jobs not finished after {timeout}s",
                    pending=pending,
                )
            if deadline is not None and time.monotonic() >= deadline:
                last = True
                continue
            time.sleep(poll_s)

    def result(self, job_id: str) -> AnyResult | None:
        """The job's result document from the bucket, or None while it has none."""
        raw = self._read([job_id])[job_id]
        return None if raw is None else parse_result(raw)

    def _read(self, job_ids: Sequence[str]) -> dict[str, bytes | None]:
        """Result documents, per job or in batch objects (``pipelines.stores.batch_results``)."""
        return read_results(self.settings, self.result_store, self.status_store, job_ids)

    def iter_results(
        self, job_ids: Sequence[str], timeout: float | None = None, poll_s: float = 0.25
    ) -> Iterator[AnyResult]:
        """Yield each job's result as soon as the job ends, in the order they end.

        A job that ended without a result document (dead-lettered before a worker saw it,
        or cancelled and not yet reached) yields a stand-in of its kind with status
        ``failed`` or ``cancelled`` and the reason as ``error``. Raises ``JobTimeout`` naming
        the jobs still pending after ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        pending = list(dict.fromkeys(job_ids))
        while pending:
            ended = self._ended(pending)
            docs = self._read(list(ended))
            for jid, st in ended.items():
                raw = docs.get(jid)
                if raw is not None:
                    yield parse_result(raw)
                elif st.state in (JobState.DEAD, JobState.CANCELLED):
                    yield stand_in(st)
                else:  # the status is written after the result: look again next round
                    continue
                pending.remove(jid)
            if not pending:
                return
            if deadline is not None and time.monotonic() >= deadline:
                raise JobTimeout(
                    f"{len(pending)} of {len(job_ids)} jobs not finished after {timeout}s",
                    pending=pending,
                )
            time.sleep(poll_s)

    def cancel(
        self, job_ids: Sequence[str], reason: str = "cancelled by user"
    ) -> dict[str, JobState | None]:
        """Cancel jobs that have not started running; returns each job's state afterwards.

        ``cancelled`` means the job will never run (a worker that meets it records a
        cancelled result); ``running`` or a terminal state means it was too late; ``None``
        means the job is unknown.
        """
        states, applied = self.status_store.cancel(list(job_ids), reason, time.time())
        if applied.groups_done and self.on_groups_done is not None:
            self.on_groups_done(applied.groups_done)
        return states

    def result_files(self, job_id: str) -> dict[str, bytes]:
        """The job's result document and every image it names, by file name."""
        raw = self._read([job_id])[job_id]
        if raw is None:
            return {}
        files = {"result.json": raw}
        doc = parse_result(raw)
        if isinstance(doc, DiffusionResult) and doc.images:
            blobs = self.result_store.get_many([im.key for im in doc.images])
            for im in doc.images:
                data = blobs.get(im.key)
                if data is not None:
                    files[Path(im.key).name] = data
        return files

    def urls(self, job_id: str, expires_s: int = 3600) -> list[str]:
        """Presigned URLs of the job's images (or of its result document if it has none; in
        the batch layout, of the batch object holding it)."""
        raw = self._read([job_id])[job_id]
        if raw is None:
            return []
        doc = parse_result(raw)
        keys = [im.key for im in doc.images] if isinstance(doc, DiffusionResult) else []
        if not keys:
            st = self.status_store.get([job_id])[job_id]
            where = parse_loc(st.loc) if st is not None and st.loc else None
            keys = [where[0] if where else self.settings.result_key(job_id)]
        return [self.result_store.presign(k, expires_s) for k in keys]

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=10)
            self._producer = None
        for store in (self._results, self._status):
            if store is not None:
                store.close()
        if self._spans is not None:
            self._spans.close()
            self._spans = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def hop(traceparent: str | Mapping[str, str] | None, job_id: str) -> str:
    """The traceparent a job is sent with: the caller's trace (for all, or by job id), or a
    new one."""
    parent = traceparent.get(job_id) if isinstance(traceparent, Mapping) else traceparent
    return trace.child(parent) if parent else trace.new_traceparent()


def _queued(job: AnyJob, at: float) -> StatusUpdate:
    return StatusUpdate(job.job_id, JobState.QUEUED, at=at, group=job_group(job), kind=job.kind)


def stand_in(st: JobStatus) -> AnyResult:
    """A result document for a job that ended before any worker wrote one."""
    cls = RESULT_TYPES.get(st.kind, RESULT_TYPES["llm"])
    if st.state is JobState.CANCELLED:
        return cls(job_id=st.job_id, status="cancelled", model="", error=st.reason)
    return cls(job_id=st.job_id, status="failed", model="", error=f"dead-lettered: {st.reason}")


def read_jobs_file(path: str, defaults: dict[str, Any]) -> list[dict[str, Any]]:
    """Read a JSONL file of jobs (or plain prompts); raises ``ConfigError`` naming the line."""
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
