"""Integration helpers: a real worker process (Celery on Redis) and a real intake (Kafka)."""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from consumers.intake import IntakeStats
from consumers.service import run_intake
from pipelines.settings import BlazeSettings
from tests.conftest import settings_env

pytestmark = pytest.mark.integration


@contextmanager
def running_worker(
    settings: BlazeSettings, log: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A ``blaze worker --device cpu`` process on the real stack, started and ready.

    Stopped with SIGTERM afterwards unless the test already ended it.
    """
    log = log or Path(tempfile.mkdtemp()) / "worker.log"
    cmd = [sys.executable, "-m", "blaze", "worker", "--device", "cpu", "--dtype", "float32"]
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


@contextmanager
def running_intake(
    settings: BlazeSettings, timeout: float = 60
) -> Iterator[Callable[[], IntakeStats]]:
    """The Kafka intake consumer in a thread; returns once it joined its group."""
    stop, ready = threading.Event(), threading.Event()
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["stats"] = run_intake(settings, stop=stop, on_ready=ready.set)
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
