"""End-to-end helpers: ``blaze`` run as a user runs it, on a stack of its own."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from minio import Minio

from infra.stack import free_stack_ports, port_free
from pipelines.settings import read_stack_secrets
from tests.conftest import stack_env

BLAZE = str(Path(sys.executable).parent / "blaze")


class User:
    """Runs ``blaze`` with one environment, like a shell with BLAZE_* exported."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env = {**os.environ, **env}
        self.cwd = cwd
        self.procs: list[subprocess.Popen[bytes]] = []

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [BLAZE, *args],
            env=self.env,
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def ok(self, *args: str, timeout: float = 120) -> str:
        res = self.run(*args, timeout=timeout)
        assert res.returncode == 0, (
            f"blaze {' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
        )
        return res.stdout

    def start(self, *args: str, log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as fh:
            proc = subprocess.Popen(
                [BLAZE, *args], env=self.env, cwd=self.cwd, stdout=fh, stderr=subprocess.STDOUT
            )
        self.procs.append(proc)
        return proc

    def key(self, name: str, scopes: str, *extra: str) -> str:
        """A new API key from `blaze keys create` (printed once)."""
        made = json.loads(
            self.ok("keys", "create", "--name", name, "--scopes", scopes, "--json", *extra)
        )
        return str(made["key"])

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def free_port() -> int:
    for _ in range(100):
        port = random.randrange(31_000, 39_000)
        if port_free(port):
            return port
    raise AssertionError("no free port")


def echo_fleet(
    user: User,
    tmp_path: Path,
    fast: str,
    worker_args: tuple[str, ...] = (),
    consumer_args: tuple[str, ...] = (),
    **env: str,
) -> tuple[str, subprocess.Popen[bytes], Path, Path]:
    """The stack with its gateway, a worker and a consumer, models ``fast`` (the echo engine,
    with the registry fields in ``fast``) and ``broken`` (weights missing: its jobs fail).

    Returns the gateway's URL, the worker process and the worker's and consumer's logs."""
    port = free_port()
    (tmp_path / "models.yaml").write_text(
        "models:\n"
        f"  fast:\n    engine: echo\n{fast}"
        f"  broken:\n    source: {tmp_path / 'no-such-weights'}\n"
    )
    user.env.update(
        BLAZE_GATEWAY__PORT=str(port),
        BLAZE_REGISTRY_FILE=str(tmp_path / "models.yaml"),
        BLAZE_OBSERVE__HEARTBEAT_S="1",
        BLAZE_OBSERVE__RUN_DIR=str(tmp_path / "run"),
        **env,
    )
    user.ok("stack", "up", "--with-gateway", timeout=180)
    worker_log, consumer_log = tmp_path / "w.log", tmp_path / "c.log"
    worker = user.start("worker", "--model", "fast", *worker_args, log=worker_log)
    user.start("consume", *consumer_args, log=consumer_log)
    wait_for_line(worker_log, " ready.", 120)
    wait_for_line(consumer_log, "intake joined group", 90)
    return f"http://127.0.0.1:{port}", worker, worker_log, consumer_log


def stack_s3(user: User) -> Minio:
    """An S3 client on the user's stack, with the credentials `blaze stack up` generated."""
    found = read_stack_secrets(Path(user.env["BLAZE_STACK__STATE_DIR"]))
    return Minio(
        f"127.0.0.1:{user.ports['s3_port']}",  # type: ignore[attr-defined]
        access_key=found["s3_access_key"],
        secret_key=found["s3_secret_key"],
        secure=False,
    )


@pytest.fixture
def user(tmp_path: Path) -> Iterator[User]:
    ports = free_stack_ports()
    env = stack_env(tmp_path / "state", ports)
    env["BLAZE_MODELS_DIR"] = str(tmp_path / "models")
    env["BLAZE_NAMESPACE"] = "e2e"
    env["BLAZE_BATCH__MAX_WAIT_S"] = "0.3"
    u = User(env, tmp_path)
    u.ports = ports  # type: ignore[attr-defined]
    try:
        yield u
    finally:
        u.stop_all()
        u.run("stack", "down", timeout=60)


def wait_for_line(log: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise AssertionError(
        f"{text!r} not in {log} after {timeout}s:\n{log.read_text(errors='replace')[-3000:]}"
    )
