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
