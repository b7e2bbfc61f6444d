"""Device pinning, importable before torch (it must run before torch initialises CUDA)."""

from __future__ import annotations

import os

from pipelines.errors import ConfigError


def pin_device(device: str) -> str:
    """Restrict this process to one device before torch initialises CUDA; returns torch's name."""
    if device == "cpu" or (device.startswith("cpu:") and device[4:].isdigit()):
        return "cpu"  # cpu:N names one of several CPU workers' queues (e.g. per NUMA node)
    if device.startswith("cuda:") and device[5:].isdigit():
        os.environ["CUDA_VISIBLE_DEVICES"] = device[5:]
        return "cuda:0"
    raise ConfigError(f"--device must be 'cpu', 'cpu:N' or 'cuda:N', got {device!r}")
