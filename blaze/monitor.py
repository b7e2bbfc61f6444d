"""What ``blaze top`` and the dashboard show: one snapshot of the whole pipeline at a time.

Everything comes from what the processes publish: their ``/metrics`` (found through heartbeats
and this host's run directory) and their heartbeats; nothing private. Rates and latency
percentiles cover the last ``window_s`` seconds (differences of counters and histogram buckets
between snapshots), like ``rate()`` and ``histogram_quantile()`` over a range in PromQL.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from pipelines.observe import local
from pipelines.observe.heartbeats import HeartbeatStore
from pipelines.openai.service import BatchService
from pipelines.settings import BlazeSettings

log = logging.getLogger(__name__)

Source = Callable[[], list[dict[str, Any]]]
Samples = dict[str, list[tuple[dict[str, str], float]]]
HISTOGRAMS = {
    "e2e": "blaze_e2e_seconds",
    "queue_wait": "blaze_queue_wait_seconds",
    "compute": "blaze_compute_seconds",
}


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def fetch(url: str, timeout_s: float = 2.0) -> Samples | None:
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=timeout_s) as resp:
            return parse(resp.read().decode())
    except (OSError, ValueError):
        return None


def total(samples: Iterable[Samples], name: str, **labels: str) -> float:
    return sum(
        v
        for s in samples
        for lab, v in s.get(name, [])
        if all(lab.get(k) == want for k, want in labels.items())
    )


def by_label(samples: Iterable[Samples], name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for s in samples:
        for lab, v in s.get(name, []):
            out[lab.get(label, "")] = out.get(lab.get(label, ""), 0.0) + v
    return out


def buckets(samples: Iterable[Samples], name: str) -> dict[float, float]:
    """Cumulative counts per upper bound, summed over every label set and process."""
    out: dict[float, float] = {}
    for s in samples:
        for lab, v in s.get(f"{name}_bucket", []):
            le = float(lab["le"])
            out[le] = out.get(le, 0.0) + v
    return out


def quantile(q: float, cumulative: dict[float, float]) -> float | None:
    """``histogram_quantile``: linear interpolation inside the bucket holding the q-th value."""
    bounds = sorted(cumulative)
    if not bounds or cumulative[bounds[-1]] <= 0:
        return None
    rank = q * cumulative[bounds[-1]]
    lower, below = 0.0, 0.0
    for le in bounds:
        count = cumulative[le]
        if count >= rank:
            if math.isinf(le):
                return lower
            inside = count - below
            return lower + (le - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = le, count
    return lower


class Monitor:
    """Builds snapshots; keeps enough history for windowed rates and percentiles.

    Args:
        settings: Which namespace, Redis and run directory to read.
        batches: Returns OpenAI batch objects to show progress of (None: not shown).
        pipelines: Returns recent pipeline runs (see ``pipeline_runs``; None: not shown).
        window_s: The window of rates and percentiles.
    """

    def __init__(
        self,
        settings: BlazeSettings,
        batches: Source | None = None,
        window_s: float = 10.0,
        pipelines: Source | None = None,
    ) -> None:
        self.settings = settings
        self.store = HeartbeatStore(settings)
        self.batches = batches
        self.window_s = window_s
        self._history: deque[tuple[float, dict[str, Any]]] = deque()
        self._pool = ThreadPoolExecutor(8, thread_name_prefix="scrape")
        self._lock = threading.Lock()
        self.pipelines = pipelines
        self._cached: dict[str, tuple[float, list[dict[str, Any]]]] = {}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.store.close()

    def _processes(self) -> tuple[list[dict[str, Any]], str | None]:
        procs: dict[str, dict[str, Any]] = {}
        problem = None
        try:
            for s in self.store.seen():
                procs[f"{s.beat.role}:{s.beat.id}"] = {
                    "role": s.beat.role,
                    "id": s.beat.id,
                    "url": s.beat.url,
                    "state": s.state,
                    "age_s": round(s.age_s, 1),
                    "info": s.beat.info,
                    "version": s.beat.version,
                    "host": s.beat.host,
                    "pid": s.beat.pid,
                }
        except Exception as exc:  # Redis down: fall back to this host's records, say why
            problem = f"heartbeats unreadable: {type(exc).__name__}"
        for doc in local.running(self.settings.observe.run_dir):
            procs.setdefault(
                f"{doc['role']}:{doc['id']}",
                {**doc, "state": "unknown", "age_s": None, "info": {}},
            )
        return sorted(procs.values(), key=lambda p: (p["role"], p["id"])), problem

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return self._snapshot()

    def _snapshot(self) -> dict[str, Any]:
        now = time.time()
        procs, problem = self._processes()
        live = [p for p in procs if p["state"] != "gone" and p.get("url")]
        scraped = dict(
            zip(
                (p["id"] for p in live),
                self._pool.map(fetch, (p["url"] for p in live)),
                strict=True,
            )
        )
        for p in procs:
            p["scraped"] = scraped.get(p["id"]) is not None
        role = {
            r: [scraped[p["id"]] for p in live if p["role"] == r and scraped.get(p["id"])]
            for r in ("consumer", "worker", "gateway")
        }
        c, w, g = role["consumer"], role["worker"], role["gateway"]
        counters = {
            "submitted": total(g, "blaze_jobs_submitted_total"),
            "received": total(c, "blaze_jobs_received_total"),
            "succeeded": total(w, "blaze_jobs_ended_total", state="succeeded"),
            "failed": total(w, "blaze_jobs_ended_total", state="failed"),
            "cancelled": total(w, "blaze_jobs_ended_total", state="cancelled"),
            "dead": total(c, "blaze_jobs_dead_lettered_total"),
            "batches": total(c, "blaze_batches_dispatched_total"),
            "batch_jobs": total(c, "blaze_batch_size_sum"),
            "fill_sum": total(c, "blaze_batch_fill_ratio_sum"),
            "fill_count": total(c, "blaze_batch_fill_ratio_count"),
            "tokens": total(w, "blaze_generation_tokens_total"),
            "requests": total(g, "blaze_gateway_requests_total"),
        }
        hists = {key: buckets(w, name) for key, name in HISTOGRAMS.items()}
        self._history.append((now, {"counters": counters, "hists": hists}))
        while len(self._history) > 2 and now - self._history[1][0] >= self.window_s:
            self._history.popleft()
        t0, old = self._history[0]
        dt = now - t0

        def delta(key: str) -> float:
            return max(0.0, counters[key] - float(old["counters"].get(key, 0.0)))

        def rate(key: str) -> float:
            return round(delta(key) / dt, 2) if dt > 0 else 0.0

        latency: dict[str, dict[str, float | None]] = {}
        for key, now_b in hists.items():
            window = {le: max(0.0, v - old["hists"][key].get(le, 0.0)) for le, v in now_b.items()}
            use = window if dt > 0 and any(window.values()) else now_b
            latency[key] = {f"p{int(q * 100)}": _round(quantile(q, use)) for q in (0.5, 0.9, 0.99)}
        fill_n = delta("fill_count")
        fill = (
            (delta("fill_sum") / fill_n)
            if fill_n
            else (counters["fill_sum"] / counters["fill_count"] if counters["fill_count"] else None)
        )
        lag = by_label(c, "blaze_consumer_lag_messages", "topic")
        workers = [self._worker(p, scraped.get(p["id"])) for p in procs if p["role"] == "worker"]
        failures = sorted(
            (
                f
                for p in procs
                if p["role"] == "worker"
                for f in p["info"].get("recent_failures", [])
            ),
            key=lambda f: f.get("at") or 0,
            reverse=True,
        )[:20]
        dead = sorted(
            (d for p in procs if p["role"] == "consumer" for d in p["info"].get("recent_dead", [])),
            key=lambda d: d.get("at") or 0,
            reverse=True,
        )[:20]
        return {
            "at": now,
            "namespace": self.settings.namespace,
            "problem": problem,
            "window_s": round(dt, 1),
            "totals": {
                k: counters[k]
                for k in (
                    "submitted",
                    "received",
                    "succeeded",
                    "failed",
                    "cancelled",
                    "dead",
                    "batches",
                )
            },
            "rates": {
                "in_per_s": rate("received"),
                "out_per_s": round(
                    (delta("succeeded") + delta("failed") + delta("cancelled")) / dt, 2
                )
                if dt > 0
                else 0.0,
                "failed_per_s": rate("failed"),
                "dead_per_s": rate("dead"),
                "tokens_per_s": rate("tokens"),
                "requests_per_s": rate("requests"),
            },
            "lag": sum(lag.values()),
            "lag_by_topic": lag,
            "queues": by_label(c, "blaze_queue_depth_batches", "queue"),
            "open_batches": total(c, "blaze_open_batches"),
            "paused_partitions": total(c, "blaze_paused_partitions"),
            "batch_fill": _round(fill),
            "batch_size_mean": _round(
                delta("batch_jobs") / delta("batches")
                if delta("batches")
                else (counters["batch_jobs"] / counters["batches"] if counters["batches"] else None)
            ),
            "latency": latency,
            "processes": [{k: v for k, v in p.items() if k != "info"} for p in procs],
            "workers": workers,
            "failures": failures,
            "dead_letters": dead,
            "batches": self._every("batches", self.batches, now, 5.0),
            "pipelines": self._every("pipelines", self.pipelines, now, 10.0),
        }

    @staticmethod
    def _worker(p: dict[str, Any], samples: Samples | None) -> dict[str, Any]:
        info = p["info"]
        busy = total([samples], "blaze_worker_busy") if samples else None
        return {
            "id": p["id"],
            "state": p["state"],
            "age_s": p["age_s"],
            "device": info.get("device"),
            "models": info.get("models") or {},
            "health": info.get("health") or {},
            "busy": bool(busy) if busy is not None else info.get("batch") is not None,
            "batch": info.get("batch"),
            "last_batch": info.get("last_batch"),
            "url": p.get("url"),
        }

    def _every(
        self,
        name: str,
        source: Source | None,
        now: float,
        every_s: float,
    ) -> list[dict[str, Any]]:
        """``source()`` at most every ``every_s``; its last answer if it fails (progress is a
        nicety: a store or Airflow that does not answer must not stop the view)."""
        if source is None:
            return []
        at, cached = self._cached.get(name, (0.0, []))
        if now - at >= every_s:
            try:
                cached = source()
            except Exception as exc:
                log.debug("monitor: %s unavailable: %s", name, exc)
            self._cached[name] = (now, cached)
        return cached


def openai_batches(service: BatchService, running: int = 10, ended: int = 5) -> Source:
    """The running OpenAI batches (progress refreshed) and the latest that ended."""

    def listing() -> list[dict[str, Any]]:
        infos = service.list_batches()
        live = [service.refresh(b.id) for b in [b for b in infos if not b.final][:running]]
        done = [b for b in infos if b.final][:ended]
        return [b.model_dump(mode="json") for b in live + done]

    return listing


def pipeline_runs(settings: BlazeSettings, limit: int = 5) -> Source:
    """Recent pipeline runs from Airflow's REST API, with how many steps have ended."""
    from pipelines.templates.airflow_api import AirflowClient

    client = AirflowClient(settings, timeout=3)

    def runs() -> list[dict[str, Any]]:
        out = []
        for r in client.recent_runs(limit):
            ended = sum(
                s in ("success", "failed", "skipped", "upstream_failed") for s in r.tasks.values()
            )
            out.append(
                {
                    "pipeline": r.dag_id,
                    "run_id": r.run_id,
                    "state": r.state,
                    "start_date": r.start_date,
                    "steps": len(r.tasks),
                    "steps_ended": ended,
                    "failed_steps": [
                        t for t, s in r.tasks.items() if s in ("failed", "upstream_failed")
                    ],
                }
            )
        return out

    return runs


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)
