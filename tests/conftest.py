"""Shared fixtures: tiny models, free ports, the embedded stack, a fresh namespace per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.stack import Stack, free_stack_ports
from pipelines.settings import BlazeSettings
from tests.valkey_cluster import valkey_cluster

DAGS = Path(__file__).resolve().parents[1] / "dags"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tansu answers a consumer's JoinGroup after half its session timeout (measured: 5.6 s at the
# default 10 s, 2.6 s at 4 s): every intake the suite starts joins a fresh group, so a shorter
# session saves ~3 s per join. 4 s still allows three missed heartbeats (one per second).
os.environ.setdefault("BLAZE_KAFKA__CONSUMER_SESSION_TIMEOUT_MS", "4000")


def stack_env(state_dir: Path, ports: dict[str, int]) -> dict[str, str]:
    """BLAZE_* variables that point every command at one stack."""
    env = {f"BLAZE_STACK__{k.upper()}": str(v) for k, v in ports.items()}
    env["BLAZE_STACK__STATE_DIR"] = str(state_dir)
    return env


def settings_env(settings: BlazeSettings) -> dict[str, str]:
    """This process's environment plus the BLAZE_* variables of ``settings``."""
    return {**os.environ, **settings.to_env()}


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder: tiny random LLMs ``tiny`` and ``tiny2``, a tiny pipeline ``sd-tiny``."""
    from blaze.dev.tiny_models import make_tiny_diffusion, make_tiny_llm

    root = tmp_path_factory.mktemp("models")
    make_tiny_llm(root / "tiny", seed=0)
    make_tiny_llm(root / "tiny2", seed=1)
    make_tiny_diffusion(root / "sd-tiny", seed=0)
    return root


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BlazeSettings]:
    """The embedded stack on free ports, started once per test session, stopped at the end."""
    state = tmp_path_factory.mktemp("stack")
    ports = free_stack_ports()
    settings = BlazeSettings(stack={"state_dir": state, **ports})
    st = Stack(settings)
    st.up()  # generates the stack's credentials; st.settings carries them
    try:
        yield st.settings
    finally:
        st.down()


@pytest.fixture
def settings(stack: BlazeSettings, tiny_models: Path) -> BlazeSettings:
    """Settings on the session stack with a fresh namespace (topics, queues, keys, group)."""
    ns = "t" + uuid.uuid4().hex[:12]
    return stack.model_copy(
        update={
            "namespace": ns,
            "models_dir": tiny_models,
            "registry_file": tiny_models / f"{ns}.yaml",  # absent unless a test writes it
            "batch": stack.batch.model_copy(update={"max_size": 8, "max_wait_s": 0.3}),
        }
    )


@pytest.fixture(scope="session")
def status_cluster(stack: BlazeSettings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A three-node Valkey cluster with the stack's Redis password, once per session; yields
    one node's URL (the client finds the others)."""
    assert stack.redis.password is not None
    folder = tmp_path_factory.mktemp("cluster")
    with valkey_cluster(folder, stack.redis.password.get_secret_value()) as ports:
        yield f"redis://127.0.0.1:{ports[1]}"


@pytest.fixture
def cluster_settings(settings: BlazeSettings, status_cluster: str) -> BlazeSettings:
    """``settings`` with the job status store on the Valkey cluster (the broker stays put)."""
    redis = settings.redis.model_copy(update={"status_url": status_cluster, "status_cluster": True})
    return settings.model_copy(update={"redis": redis})


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An Airflow home with a migrated SQLite database, set before Airflow is first imported."""
    import subprocess
    import sys

    home = tmp_path_factory.mktemp("airflow")
    os.environ.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        }
    )
    airflow = str(Path(sys.executable).parent / "airflow")
    subprocess.run([airflow, "db", "migrate"], check=True, capture_output=True, timeout=300)
    return home
