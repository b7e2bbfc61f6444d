"""What each memory/speed option of a model does on this machine, side by side.

Every configuration runs in its own process (so its peak RSS is its own), on the same work:
LLM: SmolLM2-135M-Instruct, one batch of ``--llm-batch`` chat jobs, 32 new tokens, for dtype
bf16 / fp32 and dynamic int8; diffusion: the tiny random pipeline, ``--images`` images of
``--image-size`` px, plain and with attention slicing, VAE slicing and VAE tiling. (CPU
offload only applies on a GPU.) Prints a table and, last, one JSON object.

    .venv/bin/python bench/options.py
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

LLM_CONFIGS = [
    {"kind": "llm", "label": "bf16", "dtype": "bfloat16"},
    {"kind": "llm", "label": "fp32", "dtype": "float32"},
    {"kind": "llm", "label": "int8 dynamic", "dtype": "float32", "quantize": "int8"},
]
DIFFUSION_CONFIGS = [
    {"kind": "diffusion", "label": "fp32"},
    {"kind": "diffusion", "label": "attention slicing", "attention_slicing": True},
    {"kind": "diffusion", "label": "VAE slicing", "vae_slicing": True},
    {"kind": "diffusion", "label": "VAE tiling", "vae_tiling": True},
]


def run_one(cfg: dict[str, object], args: argparse.Namespace) -> dict[str, float]:
    """Measure one configuration in this process."""
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.set_num_threads(2)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if cfg["kind"] == "llm":
        from engines.llm import TransformersLLM
        from engines.sources import install_demo_model
        from pipelines.jobs import ChatMessage, LLMJob
        from pipelines.settings import BlazeSettings

        folder = install_demo_model(BlazeSettings())
        engine = TransformersLLM("m", folder, str(cfg["dtype"]), str(cfg.get("quantize", "none")))
        engine.load("cpu")
        jobs = [
            LLMJob(
                model="m",
                max_new_tokens=32,
                messages=[ChatMessage(role="user", content=f"Tell me a fact about {n}.")],
            )
            for n in range(args.llm_batch)
        ]
        engine.run(jobs[:2])
        t0 = time.perf_counter()
        tokens = sum(o.completion_tokens for o in engine.run(jobs))
        rate = tokens / (time.perf_counter() - t0)
    else:
        import tempfile

        from blaze.dev.tiny_models import make_tiny_diffusion
        from engines.diffusion import DiffusersEngine
        from pipelines.jobs import DiffusionJob
        from pipelines.registry import ModelSpec

        folder = make_tiny_diffusion(Path(tempfile.mkdtemp()) / "sd")
        opts = {k: v for k, v in cfg.items() if k not in ("kind", "label")}
        spec = ModelSpec(name="sd", kind="diffusion", dtype="float32", **opts)  # type: ignore[arg-type]
        engine = DiffusersEngine("sd", folder, spec)
        engine.load("cpu")
        jobs = [
            DiffusionJob(
                model="sd",
                prompt="a fox",
                seed=i,
                width=args.image_size,
                height=args.image_size,
                num_inference_steps=10,
            )
            for i in range(args.images)
        ]
        engine.run(jobs[:1])
        t0 = time.perf_counter()
        engine.run(jobs)
        rate = len(jobs) / (time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"rate": rate, "peak_rss_mb": peak / 1024, "load_rss_mb": rss0 / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--llm-batch", type=int, default=16)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--only", choices=["llm", "diffusion"], default=None)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.llm_batch < 1 or args.images < 1 or args.image_size < 64 or args.image_size % 8:
        ap.error("--llm-batch, --images >= 1; --image-size >= 64 and a multiple of 8")
    if args.one:
        print(json.dumps(run_one(json.loads(args.one), args)))
        return
    configs = [c for c in LLM_CONFIGS + DIFFUSION_CONFIGS if args.only in (None, c["kind"])]
    rows = []
    for cfg in configs:
        cmd = [
            sys.executable,
            __file__,
            "--one",
            json.dumps(cfg),
            "--llm-batch",
            str(args.llm_batch),
            "--images",
            str(args.images),
            "--image-size",
            str(args.image_size),
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if res.returncode != 0:
            sys.exit(f"bench: {cfg['label']} failed:\n{res.stderr[-2000:]}")
        rows.append({**cfg, **json.loads(res.stdout.strip().splitlines()[-1])})
    print(f"{'engine':<10} {'option':<18} {'rate':>14} {'peak RSS MB':>12}")
    for r in rows:
        unit = "tok/s" if r["kind"] == "llm" else "img/s"
        print(
            f"{r['kind']:<10} {r['label']:<18} {r['rate']:>8.2f} {unit:<5} "
            f"{r['peak_rss_mb']:>12.0f}"
        )
    print(
        json.dumps(
            {
                f"{r['kind']}/{r['label']}": {
                    "rate": round(float(r["rate"]), 2),
                    "peak_rss_mb": round(float(r["peak_rss_mb"])),
                }
                for r in rows
            }
        )
    )


if __name__ == "__main__":
    main()
