"""Engine throughput by batch size, measured side by side in one process.

LLM: the Blaze transformers engine on SmolLM2-135M-Instruct (bf16 by default), chat prompts,
``--new-tokens`` greedy tokens per job (rows that reach end-of-text stop early, as in
production; tokens/s counts the tokens actually produced). Each batch size runs the same
prompts; sizes are interleaved over ``--rounds`` so machine drift hits all alike.

Diffusion: the Blaze diffusers engine on a tiny random Stable Diffusion pipeline (no real
weights ship offline; ``--diffusion-dir`` takes a real one), images per second at each batch
size, same seeds and prompts.

Prints tables, then as the last line one JSON object
``{"llm_speedup": {"8": x, "16": y, "32": z}, "diffusion_speedup": {"4": x, "8": y}}``:
throughput at that batch size over batch 1.

    .venv/bin/python bench/engine_batches.py [--sizes 1,8,16,32] [--diffusion-sizes 1,4,8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

PROMPTS = [
    "What is the capital of France?",
    "Name three primary colours.",
    "Explain what a message queue is in one sentence.",
    "Give one tip for writing clear code.",
    "What gas do plants absorb from the air?",
    "Translate 'good morning' into Spanish.",
    "What is the boiling point of water in Celsius?",
    "Write a haiku about batches.",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="1,8,16,32", help="comma-separated batch sizes")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2, help="repetitions; the median is reported")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    ap.add_argument("--model-dir", type=Path, default=None, help="a from_pretrained LLM folder")
    ap.add_argument("--diffusion-sizes", default="1,4,8", help="comma-separated batch sizes")
    ap.add_argument("--diffusion-dir", type=Path, default=None, help="a diffusers pipeline folder")
    ap.add_argument("--image-size", type=int, default=64, help="width and height of the images")
    ap.add_argument("--steps", type=int, default=10, help="denoising steps per image")
    args = ap.parse_args()

    def parse_sizes(flag: str, text: str) -> list[int]:
        try:
            found = sorted({int(x) for x in text.split(",")})
        except ValueError:
            ap.error(f"{flag} must be comma-separated integers, got {text!r}")
        if not found or found[0] < 1 or 1 not in found:
            ap.error(f"{flag} must be positive and include 1 (speedups are over batch 1)")
        return found

    sizes = parse_sizes("--sizes", args.sizes)
    dsizes = parse_sizes("--diffusion-sizes", args.diffusion_sizes)
    if args.new_tokens < 1 or args.rounds < 1 or args.threads < 1:
        ap.error("--new-tokens, --rounds and --threads must be >= 1")

    import torch
    from transformers.utils import logging as hf_logging

    from engines.llm import TransformersLLM
    from engines.sources import install_demo_model
    from pipelines.jobs import ChatMessage, LLMJob
    from pipelines.registry import DEMO_MODEL
    from pipelines.settings import BlazeSettings

    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    folder = args.model_dir or install_demo_model(BlazeSettings())
    name = DEMO_MODEL if args.model_dir is None else folder.name
    engine = TransformersLLM(name, folder, dtype=args.dtype)
    engine.load("cpu")

    def jobs(n: int) -> list[LLMJob]:
        return [
            LLMJob(
                model=name,
                messages=[ChatMessage(role="user", content=PROMPTS[i % len(PROMPTS)])],
                max_new_tokens=args.new_tokens,
            )
            for i in range(n)
        ]

    engine.run(jobs(2))  # warm-up: first-call allocations, kernels
    rates: dict[int, list[float]] = {s: [] for s in sizes}
    for _ in range(args.rounds):
        for size in sizes:
            work = jobs(max(8, 2 * size))  # batch 1 runs 8 jobs; others two full batches
            t0 = time.perf_counter()
            tokens = 0
            for start in range(0, len(work), size):
                tokens += sum(o.completion_tokens for o in engine.run(work[start : start + size]))
            rates[size].append(tokens / (time.perf_counter() - t0))
    median = {s: statistics.median(r) for s, r in rates.items()}
    print(
        f"{'batch':>6} {'tokens/s':>10} {'speedup':>8}   ({name}, {args.dtype}, "
        f"{args.threads} threads, {args.new_tokens} new tokens, median of {args.rounds})"
    )
    for s in sizes:
        print(f"{s:>6} {median[s]:>10.1f} {median[s] / median[1]:>8.2f}")
    speedup = {str(s): round(median[s] / median[1], 2) for s in sizes if s != 1}
    dmedian = bench_diffusion(args, dsizes)
    print(
        f"\n{'batch':>6} {'images/s':>10} {'speedup':>8}   (diffusion, {args.image_size}px, "
        f"{args.steps} steps, median of {args.rounds})"
    )
    for s in dsizes:
        print(f"{s:>6} {dmedian[s]:>10.2f} {dmedian[s] / dmedian[1]:>8.2f}")
    dspeedup = {str(s): round(dmedian[s] / dmedian[1], 2) for s in dsizes if s != 1}
    print(
        json.dumps(
            {
                "llm_speedup": speedup,
                "diffusion_speedup": dspeedup,
                "llm_tokens_per_s": {str(s): round(median[s], 1) for s in sizes},
                "diffusion_images_per_s": {str(s): round(dmedian[s], 2) for s in dsizes},
            }
        )
    )


def bench_diffusion(args: argparse.Namespace, sizes: list[int]) -> dict[int, float]:
    import tempfile

    from blaze.dev.tiny_models import make_tiny_diffusion
    from engines.diffusion import DiffusersEngine
    from pipelines.jobs import DiffusionJob
    from pipelines.registry import ModelSpec

    folder = args.diffusion_dir or make_tiny_diffusion(Path(tempfile.mkdtemp()) / "sd-tiny")
    spec = ModelSpec(name="sd", kind="diffusion", dtype="float32")
    engine = DiffusersEngine("sd", folder, spec)
    engine.load("cpu")

    def jobs(n: int) -> list[DiffusionJob]:
        return [
            DiffusionJob(
                model="sd",
                prompt=PROMPTS[i % len(PROMPTS)],
                seed=i,
                width=args.image_size,
                height=args.image_size,
                num_inference_steps=args.steps,
            )
            for i in range(n)
        ]

    engine.run(jobs(1))  # warm-up
    rates: dict[int, list[float]] = {s: [] for s in sizes}
    for _ in range(args.rounds):
        for size in sizes:
            work = jobs(max(8, 2 * size))
            t0 = time.perf_counter()
            for start in range(0, len(work), size):
                engine.run(work[start : start + size])
            rates[size].append(len(work) / (time.perf_counter() - t0))
    return {s: statistics.median(r) for s, r in rates.items()}


if __name__ == "__main__":
    main()
