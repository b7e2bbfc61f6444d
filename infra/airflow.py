"""Airflow in the embedded stack: ``airflow standalone`` running the template DAGs."""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from pathlib import Path

from infra.services import Service
from pipelines.settings import BlazeSettings


def airflow_health(port: int) -> bool:
    url = f"http://127.0.0.1:{port}/api/v2/monitor/health"
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            doc = json.loads(resp.read())
    except (OSError, ValueError):
        return False
    parts = ("metadatabase", "scheduler", "triggerer", "dag_processor")
    return all(doc.get(p, {}).get("status") == "healthy" for p in parts)


def airflow_service(settings: BlazeSettings, state_dir: Path) -> Service:
    """``airflow standalone`` (API/UI, scheduler, triggerer, DAG processor) on SQLite with
    the LocalExecutor, bound to 127.0.0.1, sized for a small machine, running the
    template DAGs with this stack's BLAZE_* settings."""
    st = settings.stack
    home = state_dir / "airflow"
    dags = Path(__file__).resolve().parents[1] / "dags"
    port = st.airflow_port
    af = settings.airflow
    env = {
        **settings.to_env(),
        "BLAZE_STACK__STATE_DIR": str(state_dir),
        "BLAZE_TEMPLATES_DIR": str(settings.templates_dir.resolve()),
        "BLAZE_MODELS_DIR": str(settings.models_dir.resolve()),
        "BLAZE_REGISTRY_FILE": str(settings.registry_file.resolve()),
        # standalone starts its components as `airflow ...` found on PATH
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__DAGBAG_IMPORT_ERROR_TRACEBACKS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{af.username}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(port + 1),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(port + 2),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "10",
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "True",
        # The Blaze services as Airflow connections, for users' own tasks (Blaze's
        # operators read the BLAZE_* settings above and never look connections up).
        "AIRFLOW_CONN_BLAZE_REDIS": settings.redis_url_with_password(),
        "AIRFLOW_CONN_BLAZE_KAFKA": json.dumps(
            {
                "conn_type": "kafka",
                "extra": {"bootstrap.servers": settings.kafka_bootstrap},
            }
        ),
        "AIRFLOW_CONN_BLAZE_S3": json.dumps(
            {
                "conn_type": "aws",
                "login": settings.s3.access_key,
                "password": settings.s3.secret_key.get_secret_value(),
                "extra": {"endpoint_url": f"http://{settings.s3_endpoint}"},
            }
        ),
    }
    return Service(
        name="airflow",
        argv=[sys.executable, "-m", "airflow", "standalone"],
        env=env,
        ports=[port, port + 1, port + 2],
        address=f"http://127.0.0.1:{port}",
        health=lambda: airflow_health(port),
        exe=sys.executable,
        group=True,
    )


def prepare_airflow(settings: BlazeSettings, state_dir: Path) -> None:
    """Write the password file of Airflow's simple auth manager (owner-only)."""
    home = state_dir / "airflow"
    home.mkdir(exist_ok=True)
    af = settings.airflow
    path = home / "passwords.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({af.username: af.password.get_secret_value()}, fh)
