"""The ``blaze`` package is the front door: the SDK's public names, the command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import blaze
from blaze.sdk import Client as SdkClient
from pipelines.client import Client as BaseClient
from pipelines.stores.results_memory import MemoryResultStore
from pipelines.stores.status_memory import MemoryStatusStore


def test_every_public_name_resolves() -> None:
    from blaze import Client, JobState, LLMJob, load_settings

    assert Client is SdkClient and issubclass(Client, BaseClient)
    assert LLMJob(model="tiny", prompt="hi").kind == "llm" and JobState("queued").rank == 0
    assert callable(load_settings)
    for name in blaze.__all__:
        assert getattr(blaze, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = blaze.Nope  # type: ignore[attr-defined]


def test_the_client_reads_settings_itself_and_reaches_the_batch_layer() -> None:
    client = blaze.Client(status_store=MemoryStatusStore(), result_store=MemoryResultStore())
    assert client.settings.namespace == "blaze"
    assert client.batches().store is client.result_store
    assert client.on_groups_done is not None


def test_python_m_blaze_is_the_command_line() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "blaze", "--help"], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0 and "Publish jobs to Kafka." in res.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "blaze", "worker", "--kind", "video"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "--kind must be llm, diffusion or embed" in bad.stderr


def test_gateway_commands_name_what_is_wrong(tmp_path: Path) -> None:
    import os

    env = {**os.environ, "BLAZE_REDIS__URL": "redis://127.0.0.1:1/0"}
    down = subprocess.run(
        [sys.executable, "-m", "blaze", "keys", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert down.returncode == 1 and "Redis is not reachable" in down.stderr, down.stderr
    assert "Traceback" not in down.stderr
    scopes = subprocess.run(
        [sys.executable, "-m", "blaze", "keys", "create", "--name", "a", "--scopes", "root"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert scopes.returncode == 2 and "scopes must be some of" in scopes.stderr, scopes.stderr
    tls = subprocess.run(
        [sys.executable, "-m", "blaze", "gateway", "--tls-key", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert tls.returncode == 2 and "--tls-cert and --tls-key go together" in tls.stderr


def test_a_line_with_a_long_path_prints_whole_and_literal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Piped output keeps a report line on one line however long its path, and prints a ``[``
    in a file name as it is (rich would take ``[x]`` for markup)."""
    from blaze.cli.render import say

    line = "not cacheable: /tmp/" + "deep/" * 60 + "[x] jobs.jsonl:6: a sampled job without a seed"
    say(line)
    assert capsys.readouterr().out == line + "\n"
