"""``/metrics``, ``/livez`` and ``/readyz`` of one process, on a small threaded HTTP server.

``/livez`` answers 200 while the process can answer at all. ``/readyz`` runs the process's
checks (each names a service or a condition) concurrently with a deadline and answers 503 with
the failing checks named. Results are reused for ``cache_s`` so a burst of probes does not
become a burst of connections.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from pipelines.errors import ConfigError

Check = Callable[[], "str | None"]
StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class Readiness:
    """Runs named checks concurrently; each answers None when fine, else why not."""

    def __init__(
        self, checks: Mapping[str, Check], timeout_s: float = 3.0, cache_s: float = 1.0
    ) -> None:
        self.checks = dict(checks)
        self.timeout_s = timeout_s
        self.cache_s = cache_s
        self._pool = ThreadPoolExecutor(max(1, len(self.checks)), thread_name_prefix="readyz")
        self._lock = threading.Lock()
        self._last: tuple[float, dict[str, str | None]] | None = None

    def run(self) -> dict[str, str | None]:
        with self._lock:
            if self._last and time.monotonic() - self._last[0] < self.cache_s:
                return self._last[1]
            futures = {name: self._pool.submit(_safe, c) for name, c in self.checks.items()}
            deadline = time.monotonic() + self.timeout_s
            out: dict[str, str | None] = {}
            for name, fut in futures.items():
                try:
                    out[name] = fut.result(timeout=max(0.0, deadline - time.monotonic()))
                except FutureTimeout:
                    out[name] = f"no answer within {self.timeout_s:g}s"
            self._last = (time.monotonic(), out)
            return out

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _safe(check: Check) -> str | None:
    try:
        return check()
    except Exception as exc:  # a broken check is a failing check, named, not a 500
        return f"check raised {type(exc).__name__}: {exc}"


def readiness_body(results: Mapping[str, str | None]) -> tuple[int, dict[str, Any]]:
    """The status code and JSON body of ``/readyz`` for these check results."""
    failing = [name for name, why in results.items() if why is not None]
    body = {
        "status": "not ready" if failing else "ready",
        "failing": failing,
        "checks": {name: why or "ok" for name, why in results.items()},
    }
    return (503 if failing else 200), body


class _Threading(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class ProbeServer:
    """Serves ``/metrics`` (this registry), ``/livez`` and ``/readyz`` on host:port (0: free).

    Args:
        registry: The process's metrics.
        readiness: Its readiness checks.
        host: Listen address.
        port: Listen port; 0 picks a free one (see ``port`` after start).
        info: Extra fields ``/livez`` reports (role, id, version).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        readiness: Readiness,
        host: str = "127.0.0.1",
        port: int = 0,
        info: Mapping[str, Any] | None = None,
    ) -> None:
        self.readiness = readiness
        self.info = dict(info or {})
        self._metrics = make_wsgi_app(registry)
        try:
            self._server = make_server(host, port, self._app, _Threading, _Quiet)
        except OSError as exc:
            raise ConfigError(f"--metrics-port {port} on {host}: {exc.strerror or exc}") from None
        self.host = host
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="probes", daemon=True
        )
        self._started = time.time()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> ProbeServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return self._metrics(environ, start_response)  # type: ignore[no-any-return]
        if path == "/livez":
            return _json(
                start_response,
                200,
                {"status": "alive", **self.info, "uptime_s": round(time.time() - self._started, 1)},
            )
        if path == "/readyz":
            code, body = readiness_body(self.readiness.run())
            return _json(start_response, code, body)
        return _json(
            start_response, 404, {"error": {"type": "not_found", "message": f"no route {path}"}}
        )


_REASONS = {200: "200 OK", 404: "404 Not Found", 503: "503 Service Unavailable"}


def _json(start_response: StartResponse, code: int, body: dict[str, Any]) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(
        _REASONS[code],
        [("Content-Type", "application/json"), ("Content-Length", str(len(data)))],
    )
    return [data]
