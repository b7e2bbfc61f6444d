"""The benchmarks run as documented (small sizes) so they cannot rot."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def test_intake_benchmark_prints_its_figures_last(tmp_path: Path) -> None:
    profiles = tmp_path / "not" / "yet"  # made by the bench
    figures = last_line_figures(
        "bench/intake.py", "--jobs", "120", "--batch", "16", "--profile", str(profiles)
    )
    assert figures["succeeded"] == 120 and figures["jobs_per_s"] > 0
    assert figures["results_read"] == 120 and figures["layout"] == "job"
    assert 0 < figures["batch_fill"] <= 1
    assert sorted(p.name for p in profiles.iterdir()) == [
        "bench-consumer.prof",
        "bench-worker0.prof",
    ]


def test_intake_benchmark_in_the_batch_layout_reads_every_result_back() -> None:
    figures = last_line_figures(
        "bench/intake.py", "--jobs", "120", "--batch", "16", "--layout", "batch"
    )
    assert figures["succeeded"] == 120 and figures["results_read"] == 120
    assert figures["layout"] == "batch"


def test_bench_rejects_bad_arguments() -> None:
    for script, args, why in (
        ("intake.py", ["--jobs", "0"], "--jobs must be >= 1"),
        ("intake.py", ["--profile", str(ROOT / "README.md")], "not a folder that can be written"),
        ("compare.py", ["--latency-jobs", "-1"], "--latency-jobs must be >= 0"),
    ):
        res = subprocess.run(
            [sys.executable, str(ROOT / "bench" / script), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 2 and why in res.stderr, res.stderr


def test_engine_benchmark_prints_speedups_last(tiny_models: Path) -> None:
    res = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "engine_batches.py"),
            "--model-dir",
            str(tiny_models / "tiny"),
            "--sizes",
            "1,4",
            "--new-tokens",
            "4",
            "--rounds",
            "1",
            "--dtype",
            "float32",
            "--diffusion-dir",
            str(tiny_models / "sd-tiny"),
            "--diffusion-sizes",
            "1,2",
            "--steps",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    figures = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(figures["llm_speedup"]) == {"4"} and figures["llm_speedup"]["4"] > 0
    assert set(figures["diffusion_speedup"]) == {"2"} and figures["diffusion_speedup"]["2"] > 0


def test_options_benchmark_runs_each_configuration_in_its_own_process() -> None:
    res = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "options.py"),
            "--only",
            "diffusion",
            "--images",
            "1",
            "--image-size",
            "64",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    figures = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(figures) == {
        "diffusion/fp32",
        "diffusion/attention slicing",
        "diffusion/VAE slicing",
        "diffusion/VAE tiling",
    }
    assert all(v["rate"] > 0 and v["peak_rss_mb"] > 0 for v in figures.values())


def test_compare_benchmark_smoke_run(tiny_models: Path) -> None:
    res = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "compare.py"),
            "--model-dir",
            str(tiny_models / "tiny"),
            "--dtype",
            "float32",
            "--prompts",
            "8",
            "--batch",
            "4",
            "--new-tokens",
            "3",
            "--reps",
            "1",
            "--contenders",
            "direct,blaze,naive",
            "--latency-jobs",
            "2",
            "--latency-gap",
            "0.1",
            "--workload",  # mixed lengths: also Blaze with continuous generation
            "mixed",
            "--mixed-max",
            "12",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    figures = json.loads(res.stdout.strip().splitlines()[-1])
    assert figures["blaze_over_direct"] > 0 and figures["blaze_over_naive"] > 0
    assert figures["mixed_over_static"] > 0 and figures["mixed_over_direct"] > 0
    assert figures["mixed_over_ray"] is None  # not asked
    assert figures["blaze_over_ray"] is None and figures["blaze_over_ray_warm"] is None  # not asked
    assert set(figures["table"]) == {"direct 1x2", "direct 2x1", "blaze", "continuous", "naive"}
    # a lone job spends time outside the engine call (submit, Kafka, dispatch, the result PUT)
    assert figures["added_latency_p95_ms"] >= figures["added_latency_p50_ms"] > 0
    assert figures["added_over_direct_process_p50_ms"] is not None


def test_compare_rounds_alternate_their_order() -> None:
    spec = importlib.util.spec_from_file_location("compare_bench", ROOT / "bench" / "compare.py")
    assert spec is not None and spec.loader is not None
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
    first = [("direct", "1x2"), ("direct", "2x1"), ("blaze", ""), ("ray", "1x2"), ("ray", "2x1")]
    wanted = ["direct", "blaze", "ray"]
    assert compare.round_order(wanted, 0) == compare.round_order(wanted, 2) == first
    assert compare.round_order(wanted, 1) == compare.round_order(wanted, 3) == first[::-1]


def test_gateway_benchmark_prints_its_figures_last() -> None:
    res = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gateway.py"), "--jobs", "400", "--single", "200"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    figures = json.loads(res.stdout.strip().splitlines()[-1])
    assert figures["jobs_checked"] == 600
    for name in ("bulk_jobs_per_s", "single_jobs_per_s", "p50_ms", "p99_ms"):
        assert figures[name] > 0


def last_line_figures(*args: str) -> dict[str, object]:
    """Run ``python ARGS`` from the repository root; the JSON object its last line prints."""
    res = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert res.returncode == 0, res.stderr[-3000:]
    figures: dict[str, object] = json.loads(res.stdout.strip().splitlines()[-1])
    return figures


def test_routing_and_soak_benchmarks_print_their_figures_last() -> None:
    run = last_line_figures
    routing = run("bench/routing.py", "--jobs", "48", "--strategies", "model_affinity,round_robin")
    for name in ("model_affinity", "round_robin"):
        got = routing[name]
        assert isinstance(got, dict) and got["succeeded"] == 48 and got["loads"] >= 1
    assert "rr_over_affinity_loads" in routing
    soak = run("bench/soak.py", "--jobs", "300", "--chunk", "100", "--in-flight", "200")
    assert soak["succeeded"] == 300 and set(soak["growth"]) == {"worker", "consumer"}  # type: ignore[arg-type]


def test_agreement_benchmark_counts_texts_equal_to_the_float32_reference(
    tiny_models: Path,
) -> None:
    figures = last_line_figures(
        "bench/agreement.py",
        "--model-dir",
        str(tiny_models / "tiny"),
        "--prompts",
        "4",
        "--new-tokens",
        "4",
        "--demo-tokens",
        "4",
        "--batch",
        "4",
    )
    assert figures["bench"]["jobs"] == 4 and figures["demo"]["jobs"] == 16
    for mode in ("float32 batch", "bfloat16 batch", "batch_invariant", "batch_invariant b3"):
        assert 0 <= figures["bench"][mode]["same"] <= 4
    assert figures["bench"]["batch_invariant"]["same"] == 4  # float32: the reference itself


def test_slo_benchmark_prints_latency_per_rate_and_model() -> None:
    figures = last_line_figures("bench/slo.py", "--rates", "5", "--seconds", "2")
    row = figures["5"]
    assert isinstance(row, dict) and set(row) == {"fixed", "slo"}
    for got in row.values():
        assert got["jobs"] >= 1 and got["p95_s"] >= got["p50_s"] > 0


def test_gpu_benchmark_smoke_run_on_the_cpu() -> None:
    # the GPU check runs where no GPU is lent too (small sizes), so it cannot rot between loans
    figures = last_line_figures(
        "bench/gpu.py",
        *("--device", "cpu", "--sizes", "1,2", "--new-tokens", "3", "--mixed-jobs", "4"),
        *("--mixed-sizes", "2", "--mixed-max", "10", "--steps", "2", "--image-size", "64"),
        *("--diffusion-dtype", "float32"),
    )
    assert figures["engine_device"] == "cpu" and figures["llm_seeded_row_repeats"] is True
    assert set(figures["llm_tokens_per_s"]) == {"greedy", "sampled", "continuous"}
    mixed = figures["llm_mixed"]["by_size"]["2"]
    assert mixed["static_tokens_per_s"] > 0 and mixed["continuous_tokens_per_s"] > 0
    assert mixed["static_gpu_util_pct"] is None  # no NVML device here
