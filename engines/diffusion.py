"""The diffusion engine: a diffusers text-to-image pipeline over a whole batch.

Every image gets its own ``torch.Generator`` seeded from its job (``seed + k`` for the k-th
image of a job), so a job renders the same images whatever shares its batch. A batch only
holds jobs with the same resolution, step count and guidance scale (the consumer's batch key);
the engine checks that and refuses a mixed batch.
"""

from __future__ import annotations

import io
import logging
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from engines.base import Output, parameter_bytes, resolve_dtype, torch_dtype, weights_digest
from pipelines.errors import ModelUnavailable
from pipelines.jobs import DiffusionJob
from pipelines.registry import ModelSpec

log = logging.getLogger(__name__)


class DiffusersEngine:
    """A ``StableDiffusionPipeline``-compatible pipeline loaded once on one device.

    Args:
        name: The model name jobs use.
        path: A folder ``DiffusionPipeline.from_pretrained`` loads.
        spec: Registry entry: dtype and memory options (attention slicing, VAE slicing and
            tiling, CPU offload on GPU).
    """

    def __init__(self, name: str, path: Path, spec: ModelSpec) -> None:
        self.name = name
        self.path = Path(path)
        self.spec = spec
        self.dtype = resolve_dtype(spec.dtype, "cpu")  # resolved again at load, for its device
        self.device = "cpu"
        self.pipe: Any = None
        self._digest = ""

    def load(self, device: str) -> None:
        from diffusers import DiffusionPipeline
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()
        self.dtype = resolve_dtype(self.spec.dtype, device)
        try:
            pipe = DiffusionPipeline.from_pretrained(
                self.path, dtype=torch_dtype(self.dtype, self.name), safety_checker=None
            )
        except (OSError, ValueError) as exc:
            raise ModelUnavailable(
                f"model {self.name} failed to load from {self.path}: {exc}"
            ) from None
        pipe.set_progress_bar_config(disable=True)
        opts = self.spec
        if opts.attention_slicing:
            pipe.enable_attention_slicing()
        if opts.vae_slicing:
            pipe.vae.enable_slicing()
        if opts.vae_tiling:
            pipe.vae.enable_tiling()
        if opts.cpu_offload and device.startswith("cuda"):
            pipe.enable_model_cpu_offload(device=device)
        else:
            if opts.cpu_offload:
                log.warning(
                    "model %s: cpu_offload only applies on a GPU; ignored on %s", self.name, device
                )
            pipe = pipe.to(device)
        self.pipe = pipe
        self.device = device
        self._digest = weights_digest(self.path / "unet")
        log.info("loaded %s from %s on %s (%s)", self.name, self.path, device, self.dtype)

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "engine": "diffusers",
            "weights": self._digest,
            "path": str(self.path),
            "dtype": self.dtype,
            "device": self.device,
            "options": {
                "attention_slicing": self.spec.attention_slicing,
                "vae_slicing": self.spec.vae_slicing,
                "vae_tiling": self.spec.vae_tiling,
                "cpu_offload": self.spec.cpu_offload,
            },
        }

    def memory_bytes(self) -> int:
        if self.pipe is None:
            return 0
        return parameter_bytes(self.pipe.unet, self.pipe.vae, self.pipe.text_encoder)

    def run(self, batch: Sequence[DiffusionJob]) -> list[Output]:
        """Render every image of every job in one pipeline call; PNG bytes per job."""
        if self.pipe is None:
            raise ModelUnavailable(f"model {self.name} is not loaded")
        first = batch[0]
        shape = (first.width, first.height, first.num_inference_steps, first.guidance_scale)
        for job in batch:
            if (job.width, job.height, job.num_inference_steps, job.guidance_scale) != shape:
                raise ValueError("a diffusion batch must share width, height, steps and guidance")
        prompts, negatives, generators, seeds = [], [], [], []
        gen_device = "cpu" if self.spec.cpu_offload else self.device
        for job in batch:
            seed = job.seed if job.seed is not None else secrets.randbelow(2**32 - 8)
            seeds.append(seed)
            for k in range(job.num_images):
                prompts.append(job.prompt)
                negatives.append(job.negative_prompt or "")
                generators.append(torch.Generator(device=gen_device).manual_seed(seed + k))
        with torch.inference_mode():
            images = self.pipe(
                prompt=prompts,
                negative_prompt=negatives,
                width=first.width,
                height=first.height,
                num_inference_steps=first.num_inference_steps,
                guidance_scale=first.guidance_scale,
                generator=generators,
                output_type="pil",
            ).images
        outs, at = [], 0
        for job, seed in zip(batch, seeds, strict=True):
            pngs = []
            for img in images[at : at + job.num_images]:
                buf = io.BytesIO()
                img.save(buf, format="PNG")
                pngs.append(buf.getvalue())
            at += job.num_images
            outs.append(Output(images=pngs, finish_reason="stop", info={"seed": seed}))
        return outs
