"""Does a job's answer depend on its batch? Greedy texts in batches against each job run alone.

The reference is every job run alone in float32. Each mode runs the same jobs and counts how
many texts equal the reference, and what the run cost:

- ``<dtype> alone``: one job per call;
- ``<dtype> batch``: batches of ``--batch``, the engine's default path for that dtype;
- ``<dtype> batch+prefix``: batches with the shared-prefix path forced on;
- ``batch_invariant``: batches in the exact mode (``batch_invariant: true`` in the registry).

Two sets: the demo's 8 questions twice over (chat, ``--demo-tokens`` tokens) and the first
``--prompts`` bench prompts (``bench/prompts.jsonl``, chat, ``--new-tokens`` tokens). Prints a
table and, as the last line, one JSON object: per set and mode ``same`` (of ``jobs``) and
``seconds``, and whether the demo's default path answers the capital of France.

    .venv/bin/python bench/agreement.py                      # SmolLM2, demo + 64 prompts
    .venv/bin/python bench/agreement.py --prompts 256        # all the bench prompts (slow)
    .venv/bin/python bench/agreement.py --model-dir DIR --prompts 8   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from blaze.cli.demo import DEMO_QUESTIONS

_HERE = Path(__file__).resolve().parent


def engine(model_dir: str | None, dtype: str, invariant: bool = False) -> Any:
    from engines.llm import TransformersLLM
    from engines.sources import install_demo_model
    from pipelines.registry import DEMO_MODEL
    from pipelines.settings import BlazeSettings

    folder = Path(model_dir) if model_dir else install_demo_model(BlazeSettings())
    name = folder.name if model_dir else DEMO_MODEL
    e = TransformersLLM(name, folder, dtype=dtype, batch_invariant=invariant)
    e.load("cpu")
    return e


def jobs(name: str, questions: list[str], tokens: int) -> list[Any]:
    from pipelines.jobs import ChatMessage, LLMJob

    return [
        LLMJob(model=name, messages=[ChatMessage(role="user", content=q)], max_new_tokens=tokens)
        for q in questions
    ]


def texts(e: Any, work: list[Any], batch: int) -> tuple[list[str], float]:
    t0 = time.perf_counter()
    out: list[str] = []
    for i in range(0, len(work), batch):
        out += [o.text or "" for o in e.run(work[i : i + batch])]
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model-dir", help="a from_pretrained folder (default: the demo SmolLM2)")
    ap.add_argument("--prompts", type=int, default=64, help="bench prompts to use (max 256)")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--demo-tokens", type=int, default=16)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    rows = [json.loads(x)["prompt"] for x in (_HERE / "prompts.jsonl").read_text().splitlines()]
    sets = {
        "demo": (DEMO_QUESTIONS * 2, args.demo_tokens),
        "bench": (rows[: args.prompts], args.new_tokens),
    }
    engines = {d: engine(args.model_dir, d) for d in ("float32", "bfloat16")}
    exact = engine(args.model_dir, "bfloat16", invariant=True)
    report: dict[str, Any] = {}
    for set_name, (questions, tokens) in sets.items():
        work = jobs(exact.name, questions, tokens)
        ref, _ = texts(engines["float32"], work, 1)
        modes: dict[str, tuple[list[str], float]] = {}
        for dtype, e in engines.items():
            if dtype != "float32":
                modes[f"{dtype} alone"] = texts(e, work, 1)
            modes[f"{dtype} batch"] = texts(e, work, args.batch)
            default = e.share_prefix
            e.share_prefix = True
            modes[f"{dtype} batch+prefix"] = texts(e, work, args.batch)
            e.share_prefix = default
        modes["batch_invariant"] = texts(exact, work, args.batch)
        # in several batch shapes: every job must keep its text
        for size in (3, 7):
            got, _ = texts(exact, work, size)
            modes[f"batch_invariant b{size}"] = (got, 0.0)
        report[set_name] = {"jobs": len(work)}
        print(f"\n{set_name}: {len(work)} jobs, {tokens} greedy tokens, batch {args.batch}")
        print(f"{'mode':28} {'same as fp32 alone':>20} {'seconds':>9}")
        for mode, (got, secs) in modes.items():
            same = sum(a == b for a, b in zip(got, ref, strict=True))
            report[set_name][mode] = {"same": same, "seconds": round(secs, 2)}
            print(f"{mode:28} {same:>14}/{len(work):<5} {secs:>9.2f}")
        if set_name == "demo":
            default_texts = modes["bfloat16 batch"][0]
            report["demo_france"] = [default_texts[0], default_texts[8]]
            print("bfloat16 batch, France:", default_texts[0][:80].replace("\n", " "))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
