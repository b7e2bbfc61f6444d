"""End-to-end helpers: ``blaze`` run as a user runs it, on a stack of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from minio import Minio

from infra.stack import free_stack_ports
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

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


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
