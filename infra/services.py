"""What the embedded stack knows of each server it runs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Service:
    """One embedded server: how to start it, which ports it binds, how to tell it is up."""

    name: str
    argv: list[str]
    env: dict[str, str]
    ports: list[int]
    address: str
    health: Callable[[], bool]
    exe: str = ""
    group: bool = False  # stop its whole process group (it runs children of its own)


@dataclass(frozen=True)
class ServiceState:
    name: str
    address: str
    pid: int | None
    running: bool
    healthy: bool
    log: Path
