"""Seeing Blaze run: health probes and the /metrics server, heartbeats, trace context, logs.

Every long-running process (consumer, worker, gateway) serves ``/metrics``, ``/livez`` and
``/readyz`` (``probes``), beats into Redis (``heartbeats``) and records where it listens on this
host (``local``). Each process type declares its own metrics in one module of its own layer.
"""
