"""A small client of Airflow's REST API (v2) for ``blaze pipeline``: token, trigger, status.

It uses the standard library only (no Airflow import), so ``blaze pipeline run`` works from any
machine that can reach the API server.
"""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from pipelines.errors import BlazeError, ServiceUnavailable
from pipelines.settings import BlazeSettings


class AirflowError(BlazeError):
    """Airflow answered, but not with what was asked for; the message carries its answer."""


@dataclass(frozen=True)
class PipelineRun:
    """One run of a template DAG."""

    dag_id: str
    run_id: str
    state: str
    conf: dict[str, Any]
    start_date: str | None
    end_date: str | None
    tasks: dict[str, str]


class AirflowClient:
    """Airflow's API with a JWT from ``POST /auth/token``."""

    def __init__(self, settings: BlazeSettings, timeout: float = 30) -> None:
        self.url = settings.airflow_url
        self.username = settings.airflow.username
        self.password = settings.airflow.password.get_secret_value()
        self.timeout = timeout
        self._token: str | None = None

    def _call(self, method: str, path: str, body: Any = None, auth: bool = True) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token()}"
        req = urllib.request.Request(self.url + path, data, headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:500]
            with contextlib.suppress(ValueError, AttributeError):
                detail = str(json.loads(detail).get("detail", detail))
            raise AirflowError(f"Airflow {method} {path}: HTTP {exc.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServiceUnavailable("Airflow", self.url, str(reason)) from None
        return json.loads(raw) if raw else None

    def token(self) -> str:
        if self._token is None:
            doc = self._call(
                "POST",
                "/auth/token",
                {"username": self.username, "password": self.password},
                auth=False,
            )
            self._token = str(doc["access_token"])
        return self._token

    def pipelines(self) -> list[dict[str, Any]]:
        """Template DAGs Airflow knows (tag ``template``), with whether they are paused."""
        doc = self._call("GET", "/api/v2/dags?tags=template&limit=100")
        return list(doc.get("dags", []))

    def import_errors(self) -> list[dict[str, Any]]:
        doc = self._call("GET", "/api/v2/importErrors?limit=100")
        return list(doc.get("import_errors", []))

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        doc = self._call(
            "POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf}
        )
        return str(doc["dag_run_id"])

    def run(self, dag_id: str, run_id: str) -> PipelineRun:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}"
        doc = self._call("GET", path)
        tis = self._call("GET", path + "/taskInstances")
        tasks = {t["task_id"]: str(t.get("state")) for t in tis.get("task_instances", [])}
        return PipelineRun(
            dag_id,
            run_id,
            str(doc.get("state")),
            doc.get("conf") or {},
            doc.get("start_date"),
            doc.get("end_date"),
            tasks,
        )

    def outputs(self, dag_id: str, run_id: str, task_ids: list[str]) -> dict[str, Any]:
        """Each finished step's output (its XCom ``return_value``); steps with none are left out."""
        base = f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}"
        found: dict[str, Any] = {}
        for task in task_ids:
            try:
                doc = self._call("GET", f"{base}/taskInstances/{task}/xcomEntries/return_value")
            except AirflowError as exc:
                if "HTTP 404" in str(exc):
                    continue
                raise
            value = doc.get("value") if isinstance(doc, dict) else None
            if isinstance(value, str):  # the raw serialized form, as stored
                with contextlib.suppress(ValueError):
                    value = json.loads(value)
            if value is not None:
                found[task] = value
        return found

    def recent_runs(self, limit: int = 10) -> list[PipelineRun]:
        """The newest runs of every DAG, with their steps' states."""
        doc = self._call("GET", f"/api/v2/dags/~/dagRuns?limit={limit}&order_by=-id")
        runs = []
        for d in doc.get("dag_runs", []):
            run_id = str(d.get("dag_run_id") or d.get("run_id"))
            path = f"/api/v2/dags/{d['dag_id']}/dagRuns/{urllib.parse.quote(run_id, safe='')}"
            tis = self._call("GET", path + "/taskInstances")
            tasks = {t["task_id"]: str(t.get("state")) for t in tis.get("task_instances", [])}
            runs.append(
                PipelineRun(
                    str(d["dag_id"]),
                    run_id,
                    str(d.get("state")),
                    d.get("conf") or {},
                    d.get("start_date"),
                    d.get("end_date"),
                    tasks,
                )
            )
        return runs

    def find_run(self, run_id: str, dag_ids: list[str]) -> PipelineRun:
        for dag_id in dag_ids:
            try:
                return self.run(dag_id, run_id)
            except AirflowError as exc:
                if "HTTP 404" not in str(exc):
                    raise
        raise AirflowError(f"no pipeline run {run_id!r} (looked in {', '.join(dag_ids)})")
