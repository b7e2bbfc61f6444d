"""Gateway intake: jobs accepted per second through ``blaze gateway`` against the SDK.

Runs a private embedded stack on free ports and ``blaze gateway --workers W`` on it, with a
real API key and its rate limits and open-job cap on (set high enough not to refuse this
load: every request still passes the Redis buckets and the ownership/cap script). Measures,
in one run and side by side:

- ``sdk``: ``Client.submit_many`` of the same jobs (the ceiling: no HTTP at all);
- ``bulk``: ``POST /v1/jobs`` with ``--bulk`` jobs per request from ``--clients`` concurrent
  connections;
- ``single``: one job per request, from ``--clients`` concurrent connections, with each
  request's latency (p50, p99).

Every accepted job is checked afterwards to be queued in Redis with its owner recorded, so a
fast answer that lost jobs would fail the run. The last line is one JSON object with
``bulk_jobs_per_s``, ``single_jobs_per_s``, ``p50_ms``, ``p99_ms`` (and the SDK's figure and
the ratio). Targets: bulk >= 0.7x the SDK, single >= 500 requests/s.

    .venv/bin/python bench/gateway.py --jobs 20000 --single 5000 --clients 64 --workers 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from blaze.gateway.auth import KeyStore
from infra.stack import Stack, free_stack_ports, port_free
from pipelines.client import Client
from pipelines.jobs import LLMJob
from pipelines.settings import BlazeSettings
from pipelines.stores.redis_client import redis_client


def job(i: int, prefix: str) -> dict[str, object]:
    return {"kind": "llm", "model": "noop", "prompt": f"job {i}", "job_id": f"{prefix}-{i}"}


async def post_all(
    url: str, key: str, bodies: list[list[dict[str, object]]], clients: int
) -> tuple[float, list[float]]:
    """POST every body from ``clients`` keep-alive connections; seconds and latencies.

    A minimal HTTP/1.1 client on asyncio streams: httpx's AsyncClient tops out at ~380
    requests/s on this machine (measured on ``/healthz``, against ~4,100 with this one), so
    it would measure itself, not the gateway.
    """
    host, port = url.removeprefix("http://").split(":")
    pending = iter(bodies)
    latencies: list[float] = []

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        for body in pending:
            data = json.dumps({"jobs": body}).encode()
            head = (
                f"POST /v1/jobs HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
            )
            t0 = time.perf_counter()
            writer.write(head.encode() + data)
            await writer.drain()
            lines = (await reader.readuntil(b"\r\n\r\n")).split(b"\r\n")
            length = next(
                (
                    int(ln.split(b":")[1])
                    for ln in lines
                    if ln.lower().startswith(b"content-length:")
                ),
                0,
            )
            answer = await reader.readexactly(length)
            latencies.append(time.perf_counter() - t0)
            if lines[0].split(b" ")[1] != b"202":
                raise SystemExit(f"bench: the gateway answered {lines[0]!r}: {answer[:300]!r}")
        writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(clients)))
    return time.perf_counter() - t0, latencies


def wait_up(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    sys.exit(f"bench: the gateway did not start:\n{log.read_text()[-2000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--jobs", type=int, default=20_000, help="jobs for the SDK and bulk runs")
    ap.add_argument("--bulk", type=int, default=100, help="jobs per bulk request")
    ap.add_argument("--single", type=int, default=5000, help="single-job requests")
    ap.add_argument("--clients", type=int, default=64, help="concurrent connections")
    ap.add_argument("--workers", type=int, default=2, help="gateway worker processes")
    args = ap.parse_args()
    for name in ("jobs", "bulk", "single", "clients", "workers"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be >= 1")

    tmp = Path(tempfile.mkdtemp(prefix="blaze-bench-gw-"))
    port = next(p for p in (random.randrange(31_000, 39_000) for _ in range(100)) if port_free(p))
    settings = BlazeSettings(
        namespace="benchgw",
        models_dir=tmp / "models",
        registry_file=tmp / "models.yaml",
        stack={"state_dir": tmp / "stack", **free_stack_ports()},
        gateway={"port": port, "audit": True},
    )
    stack = Stack(settings)
    gateway: subprocess.Popen[bytes] | None = None
    try:
        stack.up()
        settings = stack.settings
        keys = KeyStore(settings, redis_client(settings, health_check_s=30))
        _, key = keys.create(
            "bench", "submit,read", requests_per_s=1e6, jobs_per_min=10**9, max_open_jobs=10**8
        )
        log = tmp / "gateway.log"
        env = {**os.environ, **settings.to_env()}
        with log.open("wb") as fh:
            gateway = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "blaze",
                    "gateway",
                    "--port",
                    str(port),
                    "--workers",
                    str(args.workers),
                    "--loglevel",
                    "WARNING",
                ],
                env=env,
                stdout=fh,
                stderr=subprocess.STDOUT,
            )
        url = f"http://127.0.0.1:{port}"
        wait_up(url, gateway, log)

        with Client(settings) as client:
            client.submit_many([LLMJob(model="noop", prompt="warm-up")])
            jobs = [
                LLMJob(model="noop", prompt=f"job {i}", job_id=f"sdk-{i}") for i in range(args.jobs)
            ]
            t0 = time.perf_counter()
            client.submit_many(jobs)
            sdk_s = time.perf_counter() - t0
        asyncio.run(post_all(url, key, [[job(i, "warm")] for i in range(200)], args.clients))
        bulk = [job(i, "bulk") for i in range(args.jobs)]
        bodies = [bulk[i : i + args.bulk] for i in range(0, len(bulk), args.bulk)]
        bulk_s, _ = asyncio.run(post_all(url, key, bodies, args.clients))
        singles = [[job(i, "one")] for i in range(args.single)]
        single_s, lat = asyncio.run(post_all(url, key, singles, args.clients))

        # the invariant: every accepted job is queued, with its owner recorded
        ids = [str(j["job_id"]) for j in bulk] + [str(b[0]["job_id"]) for b in singles]
        with Client(settings) as client:
            states = client.status_store.states(ids)
        owners = keys.client.mget([f"{settings.namespace}:gw:owner:{i}" for i in ids])
        missing = [i for i in ids if states[i] is None]
        unowned = [i for i, o in zip(ids, owners, strict=True) if o != b"bench"]
        if missing or unowned:
            sys.exit(f"bench: {len(missing)} accepted jobs not queued, {len(unowned)} unowned")
        lat_ms = sorted(x * 1000 for x in lat)
        result = {
            "sdk_jobs_per_s": round(args.jobs / sdk_s, 1),
            "bulk_jobs_per_s": round(args.jobs / bulk_s, 1),
            "bulk_vs_sdk": round(sdk_s / bulk_s, 3),
            "single_jobs_per_s": round(args.single / single_s, 1),
            "p50_ms": round(statistics.median(lat_ms), 2),
            "p99_ms": round(lat_ms[int(0.99 * (len(lat_ms) - 1))], 2),
            "jobs_checked": len(ids),
            "gateway_workers": args.workers,
            "clients": args.clients,
        }
        print(f"{'metric':<20}value")
        for name, value in result.items():
            print(f"{name:<20}{value}")
        print(json.dumps(result))
    finally:
        if gateway is not None and gateway.poll() is None:
            gateway.send_signal(signal.SIGTERM)
            try:
                gateway.wait(30)
            except subprocess.TimeoutExpired:
                gateway.kill()
        stack.down()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
