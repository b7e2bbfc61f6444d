"""Optional OpenTelemetry spans: submit, batch, engine call, write.

Only when ``BLAZE_OBSERVE__OTEL_ENDPOINT`` is set (an OTLP/HTTP collector, e.g.
``http://127.0.0.1:4318``) and the ``otel`` extra is installed (``pip install blaze[otel]``);
otherwise every ``span`` is a no-op and nothing else changes. Spans continue the jobs' W3C
trace context: a submit span is the parent of its jobs' ``traceparent``; a worker's batch span
links to the trace of every job in it (one batch serves many traces, so links, not a parent).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from pipelines.observe import trace
from pipelines.settings import BlazeSettings

log = logging.getLogger(__name__)
MAX_LINKS = 128


class Spans:
    """A tracer for one process (``service``), or a no-op without an endpoint or the extra."""

    def __init__(self, settings: BlazeSettings, service: str) -> None:
        self._tracer: Any = None
        self._provider: Any = None
        endpoint = settings.observe.otel_endpoint
        if not endpoint:
            return
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError:
            log.warning("observe.otel_endpoint is set but the otel extra is not installed")
            return
        resource = Resource.create(
            {"service.name": service, "service.namespace": settings.namespace}
        )
        self._provider = TracerProvider(resource=resource)
        exporter = OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces", timeout=5)
        self._provider.add_span_processor(BatchSpanProcessor(exporter))
        self._tracer = self._provider.get_tracer("blaze")

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    @contextmanager
    def span(
        self,
        name: str,
        parent: str | None = None,
        links: Sequence[str] = (),
        **attributes: Any,
    ) -> Iterator[str | None]:
        """A span (child of ``parent``, a traceparent, or of the current span); yields its own
        traceparent, or None when tracing is off."""
        if self._tracer is None:
            yield None
            return
        from opentelemetry.trace import (
            Link,
            NonRecordingSpan,
            SpanContext,
            TraceFlags,
            set_span_in_context,
        )

        def context_of(value: str) -> SpanContext | None:
            parsed = trace.parse(value)
            if parsed is None:
                return None
            return SpanContext(
                int(parsed[0], 16), int(parsed[1], 16), True, TraceFlags(int(parsed[2], 16))
            )

        ctx = None
        if parent and (pc := context_of(parent)) is not None:
            ctx = set_span_in_context(NonRecordingSpan(pc))
        span_links = [Link(c) for v in links[:MAX_LINKS] if (c := context_of(v)) is not None]
        attrs = {k: v for k, v in attributes.items() if v is not None}
        with self._tracer.start_as_current_span(
            name, context=ctx, links=span_links, attributes=attrs
        ) as sp:
            sc = sp.get_span_context()
            yield f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{int(sc.trace_flags):02x}"

    def flush(self) -> None:
        if self._provider is not None:
            self._provider.force_flush(5000)

    def close(self) -> None:
        if self._provider is not None:
            self._provider.shutdown()
