"""Stopping the servers a test started itself, by their process ids."""

from __future__ import annotations

import subprocess


def stop(procs: list[subprocess.Popen[bytes]], grace_s: float = 30) -> None:
    """SIGTERM to each (the last started first), then SIGKILL to any still there after
    ``grace_s``."""
    for proc in reversed(procs):
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
