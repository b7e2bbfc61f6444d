"""What the benchmark scripts share: settings for a private stack, waiting for a process's log
line, stopping processes.

The scripts run as ``python bench/NAME.py``, so this module is imported by its plain name.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from infra.stack import free_stack_ports
from pipelines.settings import BlazeSettings


def private_settings(namespace: str, tmp: Path, **groups: Any) -> BlazeSettings:
    """Settings of a private stack kept in ``tmp`` on free ports (models, registry and run
    files there too); ``groups`` sets other setting groups (``batch={...}``, ``s3={...}``)."""
    return BlazeSettings(
        namespace=namespace,
        models_dir=tmp / "models",
        registry_file=tmp / "models.yaml",
        stack={"state_dir": tmp / "stack", **free_stack_ports()},
        **{"observe": {"run_dir": tmp / "run"}, **groups},
    )


def wait_for(log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float = 180) -> None:
    """Return once ``text`` is in ``log``; exit the benchmark if ``proc`` died or time ran out."""
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"bench: {log.name} never said {text!r}:\n{log.read_text()[-2000:]}")
        time.sleep(0.1)


def stop(procs: Iterable[subprocess.Popen[bytes]], timeout: float = 60) -> None:
    """SIGTERM every process still running, then wait for each (SIGKILL past ``timeout``)."""
    procs = list(procs)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
