"""The monitor's arithmetic (PromQL-style quantiles and sums) and `blaze top`'s frame."""

import math
from typing import Any

from rich.console import Console

from blaze.cli.top import render
from blaze.monitor import buckets, parse, quantile, total

TEXT = """
# TYPE blaze_jobs_ended_total counter
blaze_jobs_ended_total{kind="llm",model="a",state="succeeded"} 7.0
blaze_jobs_ended_total{kind="llm",model="b",state="failed"} 2.0
# TYPE blaze_e2e_seconds histogram
blaze_e2e_seconds_bucket{kind="llm",model="a",le="0.1"} 0.0
blaze_e2e_seconds_bucket{kind="llm",model="a",le="1.0"} 8.0
blaze_e2e_seconds_bucket{kind="llm",model="a",le="+Inf"} 10.0
blaze_e2e_seconds_count{kind="llm",model="a"} 10.0
blaze_e2e_seconds_sum{kind="llm",model="a"} 9.0
"""


def test_sums_and_quantiles_follow_promql() -> None:
    s = parse(TEXT)
    assert total([s, s], "blaze_jobs_ended_total") == 18
    assert total([s], "blaze_jobs_ended_total", state="failed") == 2
    b = buckets([s], "blaze_e2e_seconds")
    assert b == {0.1: 0.0, 1.0: 8.0, math.inf: 10.0}
    # the median is the 5th of 10 values: 5/8 of the way through the (0.1, 1] bucket
    assert abs((quantile(0.5, b) or 0) - (0.1 + 0.9 * 5 / 8)) < 1e-9
    assert quantile(0.99, b) == 1.0  # past the last finite bound: that bound
    assert quantile(0.5, {}) is None and quantile(0.5, {1.0: 0.0}) is None


def snapshot() -> dict[str, Any]:
    return {
        "at": 1000.0,
        "namespace": "ns",
        "problem": None,
        "window_s": 10.0,
        "totals": {"succeeded": 120, "failed": 3, "dead": 2, "batches": 9, "received": 125},
        "rates": {"in_per_s": 12.5, "out_per_s": 12.0, "tokens_per_s": 300.0},
        "lag": 4,
        "queues": {"ns.llm.cpu": 1},
        "open_batches": 1,
        "paused_partitions": 0,
        "batch_fill": 0.75,
        "batch_size_mean": 12.0,
        "latency": {
            k: {"p50": 0.2, "p90": 0.5, "p99": 1.5} for k in ("e2e", "queue_wait", "compute")
        },
        "workers": [
            {
                "id": "host:1:cpu",
                "state": "stale",
                "device": "cpu",
                "models": {"tiny": 2 << 20},
                "batch": None,
                "last_batch": {"finished_at": 990.0, "outcome": {"succeeded": 8, "failed": 0}},
            }
        ],
        "failures": [
            {"at": 995.0, "job_id": "j1", "model": "tiny", "reason": "engine error: boom"}
        ],
        "dead_letters": [
            {"at": 996.0, "job_id": None, "stage": "intake", "reason": "invalid JSON"}
        ],
        "batches": [],
        "pipelines": [
            {
                "pipeline": "bulk_llm",
                "run_id": "manual__1",
                "state": "running",
                "steps": 3,
                "steps_ended": 1,
                "failed_steps": [],
            }
        ],
    }


def test_top_frame_shows_rates_workers_and_failures() -> None:
    console = Console(record=True, width=160)
    console.print(render(snapshot()))
    text = console.export_text()
    for expected in (
        "blaze top · ns",
        "12.5 jobs/s",
        "batch fill 75%",
        "200 ms",
        "host:1:cpu",
        "stale",
        "tiny 2.0 MB",
        "10s ago: 8 ok, 0 failed",
        "engine error: boom",
        "invalid JSON",
        "ns.llm.cpu",
        "pipeline runs",
        "manual__1",
        "1/3",
    ):
        assert expected in text, expected
