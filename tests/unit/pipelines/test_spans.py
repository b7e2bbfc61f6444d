"""OpenTelemetry spans reach a real OTLP/HTTP receiver, continuing the jobs' trace context."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from engines.cache import EngineCache
from engines.runner import BatchRunner
from pipelines.jobs import LLMJob
from pipelines.observe import trace
from pipelines.observe.spans import Spans
from pipelines.settings import BlazeSettings
from pipelines.stores.results_memory import MemoryResultStore
from pipelines.stores.status_memory import MemoryStatusStore
from pipelines.tasks import batch_payload
from tests.unit.engines.test_worker import EchoEngine


@pytest.fixture
def collector() -> Iterator[tuple[str, list[Any]]]:
    """An OTLP/HTTP receiver on a free port that keeps every exported span."""
    spans: list[Any] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            req = ExportTraceServiceRequest.FromString(body)
            for rs in req.resource_spans:
                for ss in rs.scope_spans:
                    spans.extend(ss.spans)
            out = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", spans
    finally:
        server.shutdown()


def test_worker_spans_link_the_jobs_traces(collector: tuple[str, list[Any]]) -> None:
    url, exported = collector
    settings = BlazeSettings(namespace="otel", observe={"otel_endpoint": url})
    runner = BatchRunner(
        settings,
        MemoryResultStore(),
        MemoryStatusStore(),
        EngineCache(EchoEngine, "cpu"),  # type: ignore[arg-type]
    )
    jobs = [LLMJob(job_id=f"j{i}", model="m", prompt="hi") for i in range(2)]
    traces = {j.job_id: trace.new_traceparent() for j in jobs}
    runner.run(
        batch_payload(
            [j.model_dump(mode="json") for j in jobs], batch_id="b1", queued_at=0.0, traces=traces
        )
    )
    runner.spans.flush()
    by_name = {s.name: s for s in exported}
    assert set(by_name) == {"blaze.batch", "blaze.engine", "blaze.write"}
    batch = by_name["blaze.batch"]
    assert by_name["blaze.engine"].parent_span_id == batch.span_id
    assert by_name["blaze.write"].parent_span_id == batch.span_id
    linked = {link.trace_id.hex() for link in batch.links}
    assert linked == {trace.trace_id(t) for t in traces.values()}
    attrs = {a.key: a.value for a in batch.attributes}
    assert attrs["batch_id"].string_value == "b1" and attrs["jobs"].int_value == 2
    runner.spans.close()


def test_a_submit_span_continues_the_callers_trace(collector: tuple[str, list[Any]]) -> None:
    url, exported = collector
    spans = Spans(BlazeSettings(observe={"otel_endpoint": url}), "blaze-producer")
    parent = trace.new_traceparent()
    with spans.span("blaze.submit", parent, jobs=3) as own:
        assert own is not None and trace.trace_id(own) == trace.trace_id(parent)
    spans.flush()
    (span,) = exported
    assert span.trace_id.hex() == trace.trace_id(parent)
    assert span.parent_span_id.hex() == parent.split("-")[2]
    spans.close()


def test_without_an_endpoint_spans_are_a_no_op() -> None:
    spans = Spans(BlazeSettings(), "blaze-worker")
    with spans.span("blaze.batch", links=[trace.new_traceparent()]) as own:
        assert own is None
    assert not spans.enabled
