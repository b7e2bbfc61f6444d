"""Watching a run as an operator does: metrics that agree with the status store, heartbeats
that notice a killed worker, readiness that names Redis while it is down.

One stack (with the gateway), one worker and one consumer started by the CLI; jobs through
the gateway's REST API, some invalid (unknown model, past deadline), some failing (a model
whose weights are missing).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import User, echo_fleet, free_port, wait_for_line

ROOT = Path(__file__).resolve().parents[2]


def scrape(url: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def samples(url: str, name: str) -> list[tuple[dict[str, str], float]]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return [
        (s.labels, s.value)
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == name
    ]


def eventually(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what} not within {timeout}s"
        time.sleep(0.3)


def processes(user: User) -> dict[str, dict[str, Any]]:
    """Processes `blaze health` knows, by role (the last one of each role)."""
    res = user.run("health", "--json")
    doc = json.loads(res.stdout)
    return {r["what"]: r for r in doc["checks"] if r["what"] != "service"}


def readyz(url: str) -> tuple[int, dict[str, Any]]:
    r = httpx.get(f"{url}/readyz", timeout=10)
    return r.status_code, r.json()


def prometheus(user: User, tmp_path: Path, ended: float) -> None:
    """Run Debian's Prometheus on infra/prometheus/prometheus.yml (scraping every second)."""
    conf = yaml.safe_load((ROOT / "infra" / "prometheus" / "prometheus.yml").read_text())
    conf["global"]["scrape_interval"] = "1s"
    conf["global"]["evaluation_interval"] = "1s"
    conf["scrape_configs"][0]["scrape_timeout"] = "1s"
    home = tmp_path / "prometheus"
    (home / "targets").mkdir(parents=True)
    (home / "prometheus.yml").write_text(yaml.safe_dump(conf))
    alerts = (ROOT / "infra" / "prometheus" / "alerts.yml").read_text()
    (home / "alerts.yml").write_text(alerts)
    user.ok("targets", "--out", str(home / "targets" / "blaze.json"))
    port = free_port()
    api = f"http://127.0.0.1:{port}/api/v1"
    log = (home / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            "/usr/bin/prometheus",
            f"--config.file={home / 'prometheus.yml'}",
            f"--storage.tsdb.path={home / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:

        def query(expr: str) -> dict[str, Any]:
            r = httpx.get(f"{api}/query", params={"query": expr}, timeout=10)
            doc: dict[str, Any] = r.json()
            assert doc["status"] == "success", (expr, doc)
            return doc

        def up() -> bool:
            assert proc.poll() is None, (home / "prometheus.log").read_text()[-2000:]
            try:
                targets = httpx.get(f"{api}/targets", timeout=5).json()["data"]["activeTargets"]
            except (httpx.HTTPError, ValueError, KeyError):
                return False
            return len(targets) == 3 and all(t["health"] == "up" for t in targets)

        eventually(up, 60, "Prometheus scraping the worker, the consumer and the gateway")
        result = eventually(
            lambda: query('sum(blaze_jobs_ended_total{namespace="e2e"})')["data"]["result"],
            30,
            "ended jobs in Prometheus",
        )
        assert float(result[0]["value"][1]) == ended
        dash = json.loads((ROOT / "infra" / "grafana" / "blaze-dashboard.json").read_text())
        for panel in dash["panels"]:
            for target in panel["targets"]:
                query(target["expr"].replace("$namespace", "e2e"))  # parses and evaluates

        def rules() -> dict[str, Any]:
            groups = httpx.get(f"{api}/rules", timeout=5).json()["data"]["groups"]
            return {r["name"]: r for g in groups for r in g["rules"]}

        # the shipped alert rules evaluate on the real series: the model whose weights are
        # missing has its alert pending (it fires after 2 minutes); the others stay inactive
        # (the jobs, dead letters among them, all ended before Prometheus started, so every
        # rate it sees is 0)
        want = {"BlazeModelFailingToLoad"}
        seen: dict[str, Any] = {}

        def pending() -> bool:
            seen.update(rules())
            return {n for n, r in seen.items() if r["state"] == "pending"} == want

        try:
            eventually(pending, 30, "the failing model's alert pending")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: { ({n: r['state'] for n, r in seen.items()}) }") from None
        got = rules()
        assert len(got) == alerts.count("- alert: ")
        assert all(r["health"] == "ok" for r in got.values()), got
        assert {n for n, r in got.items() if r["state"] != "inactive"} == want
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def test_metrics_agree_with_outcomes_and_health_follows_failures(
    user: User, tmp_path: Path
) -> None:
    gateway, worker, worker_log, consumer_log = echo_fleet(
        user,
        tmp_path,
        "    max_batch_size: 16\n",
        worker_args=("--log-format", "json"),
        consumer_args=("--metrics-port", "0"),
        BLAZE_OBSERVE__STALE_AFTER_S="4",
    )
    procs = eventually(
        lambda: (p := processes(user)) and {"worker", "consumer", "gateway"} <= set(p) and p,
        30,
        "worker, consumer and gateway in blaze health",
    )
    w_url, c_url = procs["worker"]["url"], procs["consumer"]["url"]
    assert procs["gateway"]["url"] == gateway
    assert all(p["ok"] for p in procs.values()), procs
    auth = {"Authorization": f"Bearer {user.key('ops', 'submit,read,admin')}"}

    # -- a few hundred jobs: most run, some fail at the worker, some are dead-lettered ---------
    asked = iter(range(1000))  # every prompt new: no job is answered from the result cache

    def llm(model: str, n: int, **extra: Any) -> list[dict[str, Any]]:
        return [
            {"kind": "llm", "model": model, "prompt": f"p{next(asked)}", **extra} for _ in range(n)
        ]

    bodies = [
        llm("fast", 150),
        llm("fast", 100) + llm("broken", 20),
        llm("nope", 15) + llm("fast", 10, deadline="2020-01-01T00:00:00Z"),
    ]
    ids: list[str] = []
    for body in bodies:
        r = httpx.post(f"{gateway}/v1/jobs", json={"jobs": body}, headers=auth, timeout=60)
        assert r.status_code == 202, r.text
        ids += [j["job_id"] for j in r.json()["data"]]
    assert len(ids) == 295
    # during the run the counters only grow and never pass the number of jobs
    assert scrape(c_url, "blaze_jobs_received_total") <= 295
    user.run("wait", *ids, "--timeout", "120")
    states = Counter(s["state"] for s in json.loads(user.ok("status", *ids, "--json")).values())
    assert states == {"succeeded": 250, "failed": 20, "dead": 25}, states

    assert scrape(gateway, "blaze_jobs_submitted_total", kind="llm", via="jobs") == 295
    assert scrape(c_url, "blaze_jobs_received_total", kind="llm") == 295
    assert scrape(c_url, "blaze_jobs_dead_lettered_total") == states["dead"]
    assert scrape(c_url, "blaze_jobs_dead_lettered_total", reason="unknown_model") == 15
    assert scrape(c_url, "blaze_jobs_dead_lettered_total", reason="deadline") == 10
    assert scrape(w_url, "blaze_jobs_ended_total", state="succeeded") == states["succeeded"]
    assert scrape(w_url, "blaze_jobs_ended_total", state="failed") == states["failed"]
    assert scrape(w_url, "blaze_engine_errors_total", model="broken@1") >= 1  # name@version
    batches = scrape(c_url, "blaze_batches_dispatched_total")
    assert (
        batches
        == scrape(c_url, "blaze_batch_size_count")
        == scrape(w_url, "blaze_worker_batches_total")
    )
    assert scrape(c_url, "blaze_batch_size_sum") == 270
    assert scrape(w_url, "blaze_e2e_seconds_count") == 270
    assert scrape(w_url, "blaze_engine_loaded", model="fast@1") == 1
    assert scrape(gateway, "blaze_gateway_requests_total", route="/v1/jobs", code="202") == 3
    eventually(
        lambda: (
            all(v == 0 for _, v in samples(c_url, "blaze_consumer_lag_messages"))
            and samples(c_url, "blaze_consumer_lag_messages")
        ),
        15,
        "consumer lag back to 0",
    )
    # the worker's JSON log lines carry batch ids, and each result names the job's trace
    lines = [json.loads(x) for x in worker_log.read_text().splitlines() if x.startswith("{")]
    assert any(d.get("batch_id") and d.get("job_ids") for d in lines)
    result = json.loads(
        httpx.get(f"{gateway}/v1/jobs/{ids[0]}/result", headers=auth, timeout=10).text
    )
    trace_id = result["provenance"]["traceparent"].split("-")[1]
    assert trace_id in consumer_log.read_text() or any(trace_id in json.dumps(d) for d in lines)
    assert user.run("health").returncode == 0
    top = user.ok("top", "--once", "--interval", "1")
    assert (
        "blaze top · e2e" in top
        and "succeeded 250" in top
        and procs["worker"]["name"].split(":", 1)[1] in top
    )
    groups = json.loads(user.ok("targets"))
    assert {g["labels"]["role"] for g in groups} == {"worker", "consumer", "gateway"}
    assert {g["targets"][0] for g in groups} == {u.split("://")[1] for u in (w_url, c_url, gateway)}

    # -- Prometheus with infra's scrape config finds all three, and every Grafana query runs ---
    prometheus(user, tmp_path, states["succeeded"] + states["failed"])

    # -- a killed worker goes stale within the heartbeat window, and health says so -----------
    worker.kill()
    worker.wait()
    stale = eventually(
        lambda: [w for w in json.loads(user.ok("workers", "--json")) if w["state"] == "stale"],
        10,  # stale_after_s is 4 here; the rest is margin for a busy machine
        "the killed worker stale",
    )
    assert stale[0]["pid"] == worker.pid and stale[0]["info"]["device"] == "cpu"
    res = user.run("health")
    assert res.returncode == 1 and "worker" in res.stderr and "stale" in res.stdout

    # -- Redis down: every /readyz answers 503 naming it; back up, they recover ----------------
    worker2_log = tmp_path / "w2.log"
    user.start("worker", "--model", "fast", log=worker2_log)
    wait_for_line(worker2_log, " ready.", 120)
    w2_url = eventually(
        lambda: next(
            (w["url"] for w in json.loads(user.ok("workers", "--json")) if w["state"] == "alive"),
            None,
        ),
        15,
        "the second worker's heartbeat",
    )
    stack_state = json.loads((Path(user.env["BLAZE_STACK__STATE_DIR"]) / "stack.json").read_text())
    os.kill(int(stack_state["redis"]["pid"]), signal.SIGTERM)
    for url in (c_url, w2_url, gateway):
        _, body = eventually(
            lambda url=url: (r := readyz(url))[0] == 503 and r, 20, f"{url}/readyz 503"
        )
        assert "redis" in body["failing"], body
    res = user.run("health")
    assert res.returncode == 1 and "redis" in res.stderr
    user.ok("stack", "up", timeout=120)
    for url in (c_url, w2_url, gateway):
        eventually(lambda url=url: readyz(url)[0] == 200, 30, f"{url}/readyz back to 200")
    # the killed worker stays named (stale) until gone_after_s; nothing else is down
    killed = f"worker:{stale[0]['id']}"
    eventually(
        lambda: json.loads(user.run("health", "--json").stdout)["down"] == [killed],
        30,
        "health down to the killed worker alone",
    )
