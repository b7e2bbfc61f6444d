"""The intake consumer's metrics (prometheus-client), declared in one place.

Names follow vLLM and Triton: base units in names, counters end in ``_total``, bounded labels
only (``kind``, ``model``, ``queue``, ``reason``, ``topic``/``partition``), never job ids.
Counts are added once per poll rather than once per message: a message costs ~120 µs of client
CPU, and the metrics must stay a rounding error of that (see bench/intake.py --metrics).
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from consumers.dispatch import QueueDepth

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
FILL_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def reason_label(reason: str) -> str:
    """A bounded label for a dead letter's free-text reason."""
    text = reason.lower()
    for prefix, label in (
        ("invalid json", "invalid_json"),
        ("invalid job", "invalid_job"),
        ("unknown job kind", "unknown_kind"),
        ("unknown", "unknown_model"),
        ("deadline", "deadline"),
        ("empty", "empty"),
        ("worker died", "worker_died"),
    ):
        if text.startswith(prefix):
            return label
    return "other"


class IntakeMetrics:
    """Counters, histograms and gauges of one intake consumer, on its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.received = Counter(
            "blaze_jobs_received", "Job messages read from the job topics", ["kind"], registry=r
        )
        self.dead_lettered = Counter(
            "blaze_jobs_dead_lettered",
            "Jobs sent to the dead-letter topic, by stage and reason",
            ["stage", "reason"],
            registry=r,
        )
        self.batches = Counter(
            "blaze_batches_dispatched",
            "Batches handed to a worker queue",
            ["kind", "model", "queue"],
            registry=r,
        )
        self.batch_size = Histogram(
            "blaze_batch_size",
            "Jobs per dispatched batch",
            ["kind", "model"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.batch_fill = Histogram(
            "blaze_batch_fill_ratio",
            "Jobs per dispatched batch over the model's maximum batch size",
            ["kind", "model"],
            buckets=FILL_BUCKETS,
            registry=r,
        )
        self.batch_open = Histogram(
            "blaze_batch_open_seconds",
            "Time from a batch's first job being read to the batch leaving the consumer",
            ["kind", "model"],
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.lag = Gauge(
            "blaze_consumer_lag_messages",
            "Messages past the committed offset, from the log end seen in fetch responses",
            ["topic", "partition"],
            registry=r,
        )
        self.open_batches = Gauge(
            "blaze_open_batches", "Batches filling in the consumer", registry=r
        )
        self.ready_batches = Gauge(
            "blaze_ready_batches", "Full or due batches waiting for room in a queue", registry=r
        )
        self.paused = Gauge(
            "blaze_paused_partitions", "Partitions paused by backpressure", registry=r
        )
        self.queue_depth = Gauge(
            "blaze_queue_depth_batches",
            "Batches waiting in a Celery worker queue",
            ["queue"],
            registry=r,
        )
        self.group_joined = Gauge(
            "blaze_consumer_group_joined", "1 once the consumer holds partitions", registry=r
        )
        self.breaker = Gauge(
            "blaze_breaker_state",
            "Circuit breaker of a worker queue: 0 closed, 1 half-open (probing), 2 open",
            ["queue"],
            registry=r,
        )
        self.reaped = Counter(
            "blaze_batches_returned",
            "Batches of dead workers sent back to their queue by the reaper",
            ["queue"],
            registry=r,
        )
        self.cache_lookups = Counter(
            "blaze_cache_lookups",
            "Result cache look-ups at intake by outcome: a hit per tier (memory, redis, s3), "
            "miss, stale (the cached objects were gone: the job ran) or coalesced (a twin of a "
            "running job, answered when it ended)",
            ["outcome"],
            registry=r,
        )
        self.poisoned = Counter(
            "blaze_jobs_poisoned",
            "Jobs sent back alone (split) or dead-lettered after their workers died",
            ["outcome"],
            registry=r,
        )


class MeteredDepth:
    """A ``QueueDepth`` that also sets the queue-depth gauges from every reading."""

    def __init__(self, inner: QueueDepth, metrics: IntakeMetrics) -> None:
        self.inner = inner
        self.metrics = metrics

    def depth(self, queues: Sequence[str]) -> dict[str, int]:
        depths = self.inner.depth(queues)
        for queue, n in depths.items():
            self.metrics.queue_depth.labels(queue).set(n)
        return depths
