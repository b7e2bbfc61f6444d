"""GPU check of the engines: device pinning, LLM and diffusion on CUDA, batch scaling.

For a machine with an NVIDIA GPU. Builds its models at start (no downloads): an LLM with
SmolLM2-135M's shape (30 layers, hidden 576, 9 heads, 3 KV heads) but random weights and the tiny
tokenizer's vocabulary, and the tiny Stable Diffusion pipeline. Checks that a worker pinned to
``cuda:N`` sees one GPU, that outputs are right in shape and seeded rows repeat, and prints
tokens/s and images/s by batch size; the last line is one JSON object.

    python bench/gpu.py [--device cuda:0]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--sizes", default="1,8,16,32,64")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--diffusion-dtype", default="float16")
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

    def jobs(n: int, sample: bool) -> list[LLMJob]:
        return [
            LLMJob(
                model="m",
                prompt=f"question number {i} about queues",
                max_new_tokens=args.new_tokens,
                temperature=0.8 if sample else 0.0,
                seed=i,
            )
            for i in range(n)
        ]

    llm.run(jobs(2, False))
    rates: dict[str, dict[str, float]] = {"greedy": {}, "sampled": {}}
    for mode in ("greedy", "sampled"):
        for size in [int(s) for s in args.sizes.split(",")]:
            work = jobs(size, mode == "sampled")
            sync()
            t0 = time.perf_counter()
            outs = llm.run(work)
            sync()
            tokens = sum(o.completion_tokens for o in outs)
            rates[mode][str(size)] = round(tokens / (time.perf_counter() - t0), 1)
            assert all(o.error is None for o in outs), [o.error for o in outs if o.error]
    report["llm_tokens_per_s"] = rates
    one = jobs(3, True)
    report["llm_seeded_row_repeats"] = llm.run(one[1:2])[0].text == llm.run(one)[1].text

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
