"""One error tree for Blaze: every failure a caller should handle is a ``BlazeError``."""

from __future__ import annotations


class BlazeError(Exception):
    """Root of every error Blaze raises on purpose.

    Attributes:
        job_id: The job the error is about, when there is one.
        stage: Where it happened (``submit``, ``intake``, ``worker``, ``stack``, ...).
    """

    def __init__(self, message: str, *, job_id: str | None = None, stage: str | None = None):
        super().__init__(message)
        self.job_id = job_id
        self.stage = stage


class ConfigError(BlazeError):
    """A setting, argument or file is invalid; the message names which and why."""


class ServiceUnavailable(BlazeError):
    """A service (Kafka, Redis, S3, ...) did not answer at the address Blaze was given."""

    def __init__(self, service: str, address: str, detail: str = "", *, stage: str | None = None):
        text = f"{service} is not reachable at {address}"
        super().__init__(f"{text}: {detail}" if detail else text, stage=stage)
        self.service = service
        self.address = address


class InvalidJob(BlazeError):
    """A job failed validation; ``errors`` holds pydantic's error list without inputs."""

    def __init__(
        self,
        message: str,
        *,
        job_id: str | None = None,
        errors: list[dict[str, object]] | None = None,
    ):
        super().__init__(message, job_id=job_id, stage="validate")
        self.errors = errors or []


class ModelUnavailable(BlazeError):
    """A model is unknown to this worker or failed to load; its jobs fail with this reason."""


class NotFound(BlazeError):
    """An id names nothing here (no such batch, file or job in this namespace)."""


class StackError(BlazeError):
    """The embedded stack could not start, stop or report; the message carries the log tail."""


class JobTimeout(BlazeError):
    """``wait`` gave up before every job reached a terminal state."""

    def __init__(self, message: str, *, pending: list[str]):
        super().__init__(message, stage="wait")
        self.pending = pending
