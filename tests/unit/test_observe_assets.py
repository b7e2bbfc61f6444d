"""The Grafana dashboard and the README name only metrics the processes export, and the
pipeline ``--input`` option checks its file before anything is uploaded."""

import json
import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from blaze.cli.pipeline_io import input_params
from blaze.gateway.metrics import GatewayMetrics
from consumers.metrics import IntakeMetrics
from engines.cache import EngineCache
from engines.metrics import WorkerMetrics
from pipelines.errors import ConfigError
from pipelines.templates.spec import load_template

ROOT = Path(__file__).resolve().parents[2]
SUFFIXES = ("", "_total", "_bucket", "_sum", "_count", "_created")
SCRAPE_TIME = {  # gauges a collector yields at scrape time (GPU ones only where NVML answers)
    "blaze_engine_loaded",
    "blaze_engine_memory_bytes",
    "blaze_engine_unhealthy",
    "blaze_gpu_utilization_ratio",
    "blaze_gpu_memory_used_bytes",
}


def exported() -> set[str]:
    names = set(SCRAPE_TIME)
    registries = [IntakeMetrics().registry, GatewayMetrics().registry]
    worker = WorkerMetrics("cpu", CollectorRegistry())
    worker.watch(EngineCache(lambda m: None, "cpu"))  # type: ignore[arg-type, return-value]
    registries.append(worker.registry)
    for registry in registries:
        for family in registry.collect():
            names.add(family.name)
    return {n + s for n in names for s in SUFFIXES}


def test_grafana_queries_name_exported_metrics() -> None:
    dash = json.loads((ROOT / "infra" / "grafana" / "blaze-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\bblaze_[a-z0-9_]+", e)}
    assert used and not used - exported(), sorted(used - exported())


def test_readme_metric_list_matches_the_processes() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Watching it run", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"`(blaze_[a-z0-9_]+)`", section))
    assert listed and not listed - exported(), sorted(listed - exported())
    families = {
        n.removesuffix("_total")
        for n in exported()
        if not n.endswith(("_bucket", "_sum", "_count", "_created"))
    }
    missing = {f for f in families if f not in listed and f + "_total" not in listed}
    assert not missing, sorted(missing)


def test_input_files_are_checked_before_upload(tmp_path: Path) -> None:
    template = load_template(ROOT / "pipelines" / "templates" / "shipped" / "bulk_llm.yaml")
    good = tmp_path / "q.jsonl"
    good.write_text('{"text": "a"}\n\n"plain"\n')
    assert input_params(template, [str(good)]) == {"input_key": good}
    assert input_params(template, [f"input_key={good}"]) == {"input_key": good}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n{oops\n')
    with pytest.raises(ConfigError, match=r"bad\.jsonl:2: not valid JSON"):
        input_params(template, [str(bad)])
    with pytest.raises(ConfigError, match="no such file"):
        input_params(template, [str(tmp_path / "missing.jsonl")])
    with pytest.raises(ConfigError, match="no string parameter 'max_tokens'"):
        input_params(template, [f"max_tokens={good}"])


def test_alert_rules_pass_promtool_and_fire_on_their_recorded_series() -> None:
    """``promtool check`` validates the rules and the scrape configuration that loads them;
    ``promtool test rules`` replays alerts_test.yml (each alert fires where it should, and
    not on the calm series beside it)."""
    import shutil
    import subprocess

    promtool = shutil.which("promtool")
    assert promtool, "promtool comes with Debian's prometheus (infra/dev.sh setup installs it)"
    folder = ROOT / "infra" / "prometheus"
    for args in (
        ["check", "rules", "alerts.yml"],
        ["check", "config", "prometheus.yml"],
        ["test", "rules", "alerts_test.yml"],
    ):
        run = subprocess.run(
            [promtool, *args], cwd=folder, capture_output=True, text=True, timeout=60
        )
        assert run.returncode == 0, f"promtool {' '.join(args)}:\n{run.stdout}{run.stderr}"
    rules = (folder / "alerts.yml").read_text()
    used = set(re.findall(r"\bblaze_[a-z0-9_]+", rules))
    assert used and not used - exported(), sorted(used - exported())
    for name in re.findall(r"alert: (\w+)", rules):  # every alert has a test
        assert f"alertname: {name}" in (folder / "alerts_test.yml").read_text(), name
