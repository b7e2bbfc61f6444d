"""GPU check of the engines: device pinning, LLM and diffusion on CUDA, batch scaling.

For a machine with an NVIDIA GPU. Builds its models at start (no downloads): an LLM with
SmolLM2-135M's shape (30 layers, hidden 576, 9 heads, 3 KV heads) but random weights and the tiny
tokenizer's vocabulary, and the tiny Stable Diffusion pipeline. Checks that a worker pinned to
``cuda:N`` sees one GPU, that outputs are right in shape and seeded rows repeat, and prints
tokens/s and images/s by batch size; the last line is one JSON object.

The continuous-batching path (``generation: continuous``) runs beside the static one:
- uniform: ``size`` greedy jobs of ``--new-tokens`` each, at every size, static and continuous
  (``max_rows`` = size);
- mixed: ``--mixed-jobs`` greedy jobs whose ``max_new_tokens`` are drawn from 8 to
  ``--mixed-max`` by a fixed seed, run as static batches of ``size`` one after another and as one
  continuous call with ``max_rows`` = size (``mixed_over_static`` per size), with the share of
  rows whose tokens match between the two paths.
Each timed run reports the GPU's mean utilisation while it ran (NVML, sampled every 20 ms).

    python bench/gpu.py [--device cuda:0]
    python bench/gpu.py --device cpu --sizes 1,2 --new-tokens 4 --mixed-jobs 4 \
        --mixed-sizes 2 --mixed-max 12 --steps 2 --image-size 64   # a smoke run on a CPU
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class Utilisation:
    """The GPU's utilisation (NVML's percent of time a kernel ran), sampled in a thread while
    a ``with`` block runs; ``None`` where NVML is not there (a CPU run)."""

    def __init__(self) -> None:
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle: Any = pynvml.nvmlDeviceGetHandleByIndex(0)
            self._read: Callable[[], int] | None = lambda: int(
                pynvml.nvmlDeviceGetUtilizationRates(self._handle).gpu
            )
        except Exception:  # no NVML library or no GPU: report None
            self._read = None
        self.last: float | None = None

    @contextmanager
    def sampled(self) -> Iterator[None]:
        samples: list[int] = []
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(0.02):
                if self._read is not None:
                    samples.append(self._read())

        t = threading.Thread(target=loop, daemon=True)
        t.start()
        try:
            yield
        finally:
            stop.set()
            t.join()
            self.last = round(sum(samples) / len(samples), 1) if samples else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--sizes", default="1,8,16,32,64")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--diffusion-dtype", default="float16")
    ap.add_argument("--mixed-jobs", type=int, default=64)
    ap.add_argument("--mixed-sizes", default="8,16,32,64")
    ap.add_argument("--mixed-max", type=int, default=128)
    args = ap.parse_args()

    from engines.devices import pin_device

    device = pin_device(args.device)  # before torch initialises CUDA
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    def sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    from blaze.dev.tiny_models import make_tiny_diffusion, make_tiny_llm
    from engines.diffusion import DiffusersEngine
    from engines.llm import TransformersLLM
    from pipelines.jobs import DiffusionJob, LLMJob
    from pipelines.registry import ModelSpec

    report: dict[str, object] = {
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "visible_devices": torch.cuda.device_count(),
        "device_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "engine_device": device,
    }
    root = Path(tempfile.mkdtemp())
    tiny = make_tiny_llm(root / "tok")
    cfg = LlamaConfig.from_pretrained(tiny)
    cfg.update(
        {
            "hidden_size": 576,
            "intermediate_size": 1536,
            "num_hidden_layers": 30,
            "num_attention_heads": 9,
            "num_key_value_heads": 3,
            "max_position_embeddings": 2048,
        }
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(root / "llm")
    for f in tiny.iterdir():
        if f.name.startswith(("tokenizer", "special", "chat")):
            (root / "llm" / f.name).write_bytes(f.read_bytes())

    llm = TransformersLLM("smol-shaped", root / "llm", dtype="bfloat16")
    llm.load(device)
    report["llm_param_device"] = str(next(llm.model.parameters()).device)
    util = Utilisation()

    def jobs(n: int, sample: bool, limits: list[int] | None = None) -> list[LLMJob]:
        return [
            LLMJob(
                model="m",
                prompt=f"question number {i} about queues",
                max_new_tokens=limits[i] if limits else args.new_tokens,
                temperature=0.8 if sample else 0.0,
                seed=i,
            )
            for i in range(n)
        ]

    def timed(engine: TransformersLLM, batches: list[list[LLMJob]]) -> tuple[list[Any], float]:
        """Run the batches one after another; their outputs and tokens/s (GPU use in util)."""
        outs: list[Any] = []
        sync()
        t0 = time.perf_counter()
        with util.sampled():
            for batch in batches:
                outs += engine.run(batch)
            sync()
        took = time.perf_counter() - t0
        assert all(o.error is None for o in outs), [o.error for o in outs if o.error]
        return outs, round(sum(o.completion_tokens for o in outs) / took, 1)

    sizes = [int(s) for s in args.sizes.split(",")]
    llm.run(jobs(2, False))
    rates: dict[str, dict[str, float]] = {"greedy": {}, "sampled": {}}
    busy: dict[str, dict[str, float | None]] = {"greedy": {}, "sampled": {}}
    for size in sizes:  # each shape once untimed first: a first call at a size pays its setup
        for mode in ("greedy", "sampled"):
            llm.run(jobs(size, mode == "sampled"))
            _, rates[mode][str(size)] = timed(llm, [jobs(size, mode == "sampled")])
            busy[mode][str(size)] = util.last
    one = jobs(3, True)
    report["llm_seeded_row_repeats"] = llm.run(one[1:2])[0].text == llm.run(one)[1].text

    # continuous batching: the same model, rows refilled as they end (max_rows = size)
    def continuous(rows: int) -> TransformersLLM:
        eng = TransformersLLM(
            "smol-shaped", root / "llm", dtype="bfloat16", generation="continuous", max_rows=rows
        )
        eng.load(device)
        eng.run(jobs(rows, False))  # untimed first call at this size, as for the static path
        return eng

    rates["continuous"], busy["continuous"] = {}, {}
    for size in sizes:
        cont = continuous(size)
        _, rates["continuous"][str(size)] = timed(cont, [jobs(size, False)])
        busy["continuous"][str(size)] = util.last
        cont.close()
    report["llm_tokens_per_s"] = rates
    report["llm_gpu_util_pct"] = busy

    draw = random.Random(17)
    limits = [draw.randint(8, args.mixed_max) for _ in range(args.mixed_jobs)]
    work = jobs(args.mixed_jobs, False, limits)
    mixed: dict[str, dict[str, Any]] = {}
    for size in [int(s) for s in args.mixed_sizes.split(",")]:
        static_outs, static_rate = timed(
            llm, [work[i : i + size] for i in range(0, len(work), size)]
        )
        static_util = util.last
        cont = continuous(size)
        cont_outs, cont_rate = timed(cont, [work])
        cont.close()
        same = sum(a.text == b.text for a, b in zip(static_outs, cont_outs, strict=True))
        mixed[str(size)] = {
            "static_tokens_per_s": static_rate,
            "continuous_tokens_per_s": cont_rate,
            "mixed_over_static": round(cont_rate / static_rate, 3),
            "static_gpu_util_pct": static_util,
            "continuous_gpu_util_pct": util.last,
            "same_text": f"{same}/{len(work)}",
        }
    report["llm_mixed"] = {
        "jobs": args.mixed_jobs,
        "max_new_tokens": f"8-{args.mixed_max}",
        "tokens": sum(limits),
        "by_size": mixed,
    }

    sd = make_tiny_diffusion(root / "sd")
    for offload in (False, True):
        spec = ModelSpec(
            name="sd",
            kind="diffusion",
            dtype=args.diffusion_dtype,
            devices=["cuda:0"],
            cpu_offload=offload,
            attention_slicing=offload,
        )
        eng = DiffusersEngine("sd", sd, spec)
        eng.load(device)
        djobs = [
            DiffusionJob(
                model="sd",
                prompt="a fox",
                seed=i,
                width=args.image_size,
                height=args.image_size,
                num_inference_steps=args.steps,
            )
            for i in range(8)
        ]
        eng.run(djobs[:1])
        per_size = {}
        for size in (1, 4, 8):
            sync()
            t0 = time.perf_counter()
            outs = eng.run(djobs[:size])
            sync()
            per_size[str(size)] = round(size / (time.perf_counter() - t0), 2)
            assert all(len(o.images) == 1 and o.images[0][:4] == b"\x89PNG" for o in outs)
        report[f"diffusion_images_per_s{'_offload' if offload else ''}"] = per_size
        del eng
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if torch.cuda.is_available():
        report["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
