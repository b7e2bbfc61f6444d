"""Where the long-running processes of this host listen: one small JSON file per process.

``blaze health`` and ``blaze top`` find ``/metrics`` and ``/readyz`` here even while Redis (and
so the heartbeats) is down. A file whose process no longer exists is removed when read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def record(run_dir: Path, role: str, proc_id: str, url: str) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / f"{role}-{os.getpid()}.json"
    doc = {"role": role, "id": proc_id, "pid": os.getpid(), "url": url}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    tmp.replace(path)
    return path


def running(run_dir: Path) -> list[dict[str, Any]]:
    """Processes of this host that recorded their address and still run."""
    out = []
    for path in sorted(run_dir.glob("*.json")) if run_dir.is_dir() else []:
        try:
            doc = json.loads(path.read_text())
            os.kill(int(doc["pid"]), 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
            continue
        except (OSError, ValueError, KeyError, TypeError):
            continue
        out.append(doc)
    return out
