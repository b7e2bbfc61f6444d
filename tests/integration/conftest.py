"""Integration helpers: a real worker process (Celery on Redis) and a real intake (Kafka)."""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from consumers.intake import IntakeStats
from consumers.service import run_intake
from pipelines.settings import BlazeSettings
from tests.conftest import settings_env

pytestmark = pytest.mark.integration


@contextmanager
def running_worker(
    settings: BlazeSettings, log: Path | None = None, dtype: str | None = "float32"
) -> Iterator[subprocess.Popen[bytes]]:
    """A ``blaze worker --device cpu`` process on the real stack, started and ready; with a
    ``dtype`` override (which also keeps it from storing result-cache answers) unless None.

    Stopped with SIGTERM afterwards unless the test already ended it.
    """
    log = log or Path(tempfile.mkdtemp()) / "worker.log"
    cmd = [sys.executable, "-m", "blaze", "worker", "--device", "cpu"]
    if dtype is not None:
        cmd += ["--dtype", dtype]
    with log.open("ab") as fh:
        proc = subprocess.Popen(
            cmd, env=settings_env(settings), stdout=fh, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 120
        while " ready." not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"worker did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class Supervisor:
    """Restarts a worker process whenever it exits, as systemd or Kubernetes would."""

    def __init__(self, settings: BlazeSettings, logs: Path, args: Sequence[str] = ()) -> None:
        self.cmd = [sys.executable, "-m", "blaze", "worker", "--metrics-port", "0", *args]
        self.env = settings_env(settings)
        self.logs = logs
        self.exits: list[int] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _start(self) -> subprocess.Popen[bytes]:
        log = self.logs / f"worker-{len(self.exits)}.log"
        with log.open("ab") as fh:
            return subprocess.Popen(self.cmd, env=self.env, stdout=fh, stderr=subprocess.STDOUT)

    def _loop(self) -> None:
        while not self._stop.is_set():
            proc = self.proc
            if proc is not None and proc.poll() is not None:
                self.exits.append(proc.returncode)
                if not self._stop.is_set():
                    self.proc = self._start()
            self._stop.wait(0.2)

    def __enter__(self) -> Supervisor:
        self.proc = self._start()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_tail(self, n: int = 3000) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.logs.glob("*.log")))[-n:]


@contextmanager
def running_intake(
    settings: BlazeSettings, timeout: float = 60, **options: Any
) -> Iterator[Callable[[], IntakeStats]]:
    """The Kafka intake consumer in a thread (``options`` go to ``run_intake``); returns once
    it joined its group."""
    stop, ready = threading.Event(), threading.Event()
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["stats"] = run_intake(settings, stop=stop, on_ready=ready.set, **options)
        except BaseException as exc:  # surfaced to the test below
            box["error"] = exc
            ready.set()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    assert ready.wait(timeout), "intake did not join its consumer group"
    if "error" in box:
        raise box["error"]  # type: ignore[misc]

    def stats() -> IntakeStats:
        assert "stats" in box, "intake has not stopped yet"
        return box["stats"]  # type: ignore[return-value]

    try:
        yield stats
    finally:
        stop.set()
        thread.join(60)
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
