"""All of Blaze's configuration: one frozen settings object read from ``BLAZE_*`` and ``.env``.

Nested groups use ``__`` in variable names, e.g. ``BLAZE_KAFKA__BOOTSTRAP_SERVERS`` or
``BLAZE_S3__SECRET_KEY``. Endpoints left unset point at the embedded stack (``blaze stack up``),
so the same commands reach external Kafka, Redis and S3 by settings alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipelines.errors import ConfigError

NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,39}$"
Port = int


class _Group(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Group):
    """Kafka (or any Kafka-protocol broker) connection and topic layout."""

    bootstrap_servers: str | None = Field(
        default=None, description="host:port[,host:port]; unset means the embedded broker"
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None
    partitions: int = Field(default=4, ge=1, le=1024)
    replication_factor: int = Field(default=1, ge=1, le=16)
    consumer_session_timeout_ms: int = Field(default=10_000, ge=1_000, le=300_000)
    fetch_max_wait_ms: int = Field(
        default=20, ge=1, le=5000, description="intake: longest a fetch waits at the broker"
    )
    status_events: bool = Field(
        default=True, description="publish every job state change to {namespace}.status"
    )

    def client_config(self) -> dict[str, Any]:
        """Security keyword arguments shared by every kafka-python client."""
        cfg: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.sasl_mechanism:
            cfg["sasl_mechanism"] = self.sasl_mechanism
            cfg["sasl_plain_username"] = self.sasl_username
            cfg["sasl_plain_password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else None
            )
        if self.ssl_cafile:
            cfg["ssl_cafile"] = self.ssl_cafile
        return cfg


class RedisSettings(_Group):
    """Redis or Valkey: Celery broker and the job status store."""

    url: str | None = Field(default=None, description="redis://host:port/db; unset = embedded")
    password: SecretStr | None = None
    status_ttl_s: int = Field(default=7 * 24 * 3600, ge=60)


class S3Settings(_Group):
    """S3-compatible storage for results (AWS S3, MinIO, SeaweedFS)."""

    endpoint: str | None = Field(default=None, description="host:port; unset = embedded")
    access_key: str = "blaze"
    secret_key: SecretStr = SecretStr("blaze-secret-key")
    bucket: str = Field(default="blaze-results", pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    region: str = "us-east-1"
    secure: bool = False
    write_threads: int = Field(default=16, ge=1, le=256)
    conditional_writes: bool = Field(
        default=True, description="If-None-Match on result writes (first writer wins)"
    )
    multipart_threshold_mb: int = Field(default=16, ge=5, le=5120)
    retention_days: float | None = Field(
        default=None, gt=0, description="age at which `blaze results sweep` deletes results"
    )


class StackSettings(_Group):
    """Where and on which ports ``blaze stack up`` runs the embedded services."""

    state_dir: Path = Path(".blaze/stack")
    kafka_port: Port = Field(default=19092, ge=1024, le=65535)
    s3_port: Port = Field(default=18333, ge=1024, le=65535)
    redis_port: Port = Field(default=16379, ge=1024, le=65535)
    seaweed_port_base: Port = Field(
        default=18400,
        ge=1024,
        le=55530,
        description="SeaweedFS master, filer, volume, admin take base..base+3; gRPC +10000",
    )
    airflow_port: Port = Field(
        default=18080,
        ge=1024,
        le=65533,
        description="Airflow API/UI (with --with-airflow); its log servers take +1 and +2",
    )
    kafka_bucket: str = "blaze-kafka"
    start_timeout_s: float = Field(default=60.0, gt=0)


class BatchSettings(_Group):
    """Default micro-batching limits (per model overrides come with the model registry)."""

    max_size: int = Field(default=16, ge=1, le=1024)
    max_wait_s: float = Field(default=0.5, gt=0, le=600)
    quiet_s: float = Field(
        default=0.03,
        ge=0,
        le=600,
        description=(
            "a partial batch nothing joined for this long leaves before max_wait_s if a worker "
            "queue for it is empty (0: always wait the window); keep it above the gaps between "
            "the pieces in which the consumer reads one burst (12-26 ms measured on Tansu)"
        ),
    )
    max_queued_batches: int = Field(
        default=4, ge=1, le=10_000, description="backpressure: batches waiting per worker queue"
    )


class WorkerSettings(_Group):
    """Celery worker behaviour."""

    visibility_timeout_s: int = Field(
        default=3600, ge=10, description="longer than the longest batch, or it runs twice"
    )
    torch_threads: int | None = Field(default=None, ge=1, le=256)
    memory_budget_mb: int | None = Field(
        default=None, ge=1, description="unload least recently used models above this"
    )


class AirflowSettings(_Group):
    """Where ``blaze pipeline`` reaches Airflow's REST API (v2)."""

    url: str | None = Field(default=None, description="http://host:port; unset = embedded")
    username: str = "blaze"
    password: SecretStr = SecretStr("blaze-airflow")
    inline_wait_s: float = Field(
        default=10.0,
        ge=0,
        le=3600,
        description="a job step waits this long in its task before deferring to the triggerer",
    )


class BlazeSettings(BaseSettings):
    """Every setting Blaze reads, validated once at start-up."""

    model_config = SettingsConfigDict(
        env_prefix="BLAZE_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
        frozen=True,
    )

    namespace: str = Field(
        default="blaze",
        pattern=NAME_PATTERN,
        description="prefix of topics, queues, Redis keys and S3 keys",
    )
    models_dir: Path = Path(".blaze/models")
    registry_file: Path = Field(
        default=Path(".blaze/models.yaml"), description="model registry (YAML); optional"
    )
    templates_dir: Path = Field(
        default=Path(".blaze/templates"),
        description="pipeline templates (*.yaml) added to the shipped ones",
    )
    kafka: KafkaSettings = KafkaSettings()
    redis: RedisSettings = RedisSettings()
    s3: S3Settings = S3Settings()
    stack: StackSettings = StackSettings()
    batch: BatchSettings = BatchSettings()
    worker: WorkerSettings = WorkerSettings()
    airflow: AirflowSettings = AirflowSettings()

    @model_validator(mode="after")
    def _ports_distinct(self) -> BlazeSettings:
        st = self.stack
        base = st.seaweed_port_base
        seaweed = [base + i for i in range(4)] + [base + 10_000 + i for i in range(4)]
        named = {
            "kafka_port": st.kafka_port,
            "s3_port": st.s3_port,
            "redis_port": st.redis_port,
            "airflow_port": st.airflow_port,
        }
        for name, port in named.items():
            if port in seaweed or port + 10_000 in seaweed:
                raise ValueError(f"stack.{name}={port} collides with SeaweedFS ports {seaweed}")
        if len(set(named.values())) != len(named):
            raise ValueError(f"stack ports must differ: {named}")
        return self

    def to_env(self) -> dict[str, str]:
        """These settings as ``BLAZE_*`` variables, so a child process sees the same ones."""
        out: dict[str, str] = {}

        def walk(prefix: str, model: BaseModel) -> None:
            for name in type(model).model_fields:
                value = getattr(model, name)
                key = f"{prefix}{name.upper()}"
                if isinstance(value, BaseModel):
                    walk(key + "__", value)
                elif value is None:
                    continue
                elif isinstance(value, SecretStr):
                    out[key] = value.get_secret_value()
                elif isinstance(value, bool):
                    out[key] = "true" if value else "false"
                else:
                    out[key] = str(value)

        walk("BLAZE_", self)
        return out

    # -- resolved endpoints -------------------------------------------------------------
    @property
    def kafka_bootstrap(self) -> str:
        return self.kafka.bootstrap_servers or f"127.0.0.1:{self.stack.kafka_port}"

    @property
    def redis_url(self) -> str:
        return self.redis.url or f"redis://127.0.0.1:{self.stack.redis_port}/0"

    @property
    def airflow_url(self) -> str:
        return (self.airflow.url or f"http://127.0.0.1:{self.stack.airflow_port}").rstrip("/")

    @property
    def s3_endpoint(self) -> str:
        return self.s3.endpoint or f"127.0.0.1:{self.stack.s3_port}"

    # -- names derived from the namespace ------------------------------------------------
    def jobs_topic(self, kind: str) -> str:
        return f"{self.namespace}.jobs.{kind}"

    @property
    def dead_letter_topic(self) -> str:
        return f"{self.namespace}.dead-letter"

    @property
    def status_topic(self) -> str:
        return f"{self.namespace}.status"

    @property
    def consumer_group(self) -> str:
        return f"{self.namespace}.intake"

    def queue(self, engine: str, device: str) -> str:
        """Celery queue of one engine on one device, e.g. ``blaze.llm.cpu``."""
        return f"{self.namespace}.{engine}.{device.replace(':', '')}"

    def result_prefix(self, job_id: str) -> str:
        return f"{self.namespace}/jobs/{job_id}/"

    def result_key(self, job_id: str) -> str:
        """Where a job's result lives; depends only on the namespace and the job id."""
        return f"{self.result_prefix(job_id)}result.json"

    def manifest_key(self, batch_id: str) -> str:
        """The manifest of one dispatched batch (which jobs, where, how they ended)."""
        return f"{self.namespace}/batches/{batch_id}/manifest.json"

    def openai_batch_prefix(self, batch_id: str) -> str:
        """Files of one OpenAI-style batch: batch.json, input, requests, output, errors."""
        return f"{self.namespace}/openai-batches/{batch_id}/"


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str, what: str = "duration") -> float:
    """Seconds in ``"90s"``, ``"30m"``, ``"24h"``, ``"7d"``, ``"2w"`` or a plain number of seconds.

    Raises ``ConfigError`` naming ``what`` for anything else or for a value that is not > 0.
    """
    raw = text.strip().lower()
    unit = raw[-1:] if raw[-1:] in _UNITS else "s"
    number = raw[:-1] if raw[-1:] in _UNITS else raw
    try:
        seconds = float(number) * _UNITS[unit]
    except ValueError:
        raise ConfigError(
            f"{what} {text!r} is not a duration (use e.g. 90s, 30m, 24h, 7d)"
        ) from None
    if not seconds > 0 or seconds == float("inf"):
        raise ConfigError(f"{what} must be > 0, got {text!r}")
    return seconds


def load_settings(**overrides: Any) -> BlazeSettings:
    """Read settings from the environment; a bad value raises ``ConfigError`` naming it."""
    try:
        return BlazeSettings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"BLAZE_{'__'.join(str(p).upper() for p in err['loc'])}: {err['msg']}"
            if err["loc"]
            else err["msg"]
            for err in exc.errors(include_input=False)
        )
        raise ConfigError(f"invalid settings: {problems}", stage="settings") from None
