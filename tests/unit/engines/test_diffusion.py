"""The diffusers engine on a tiny random Stable Diffusion pipeline built at test time."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engines.diffusion import DiffusersEngine
from pipelines.jobs import DiffusionJob
from pipelines.registry import ModelSpec


@pytest.fixture(scope="module")
def engine(tiny_models: Path) -> DiffusersEngine:
    e = DiffusersEngine(
        "sd-tiny",
        tiny_models / "sd-tiny",
        ModelSpec(name="sd-tiny", kind="diffusion", dtype="float32"),
    )
    e.load("cpu")
    return e


def job(**kw: object) -> DiffusionJob:
    base: dict[str, object] = {
        "model": "sd-tiny",
        "prompt": "a red fox",
        "width": 64,
        "height": 64,
        "num_inference_steps": 3,
    }
    return DiffusionJob.model_validate({**base, **kw})


def test_every_job_gets_its_images_as_png(engine: DiffusersEngine) -> None:
    outs = engine.run([job(seed=1), job(seed=2, num_images=3, negative_prompt="blurry")])
    assert [len(o.images) for o in outs] == [1, 3]
    img = Image.open(io.BytesIO(outs[1].images[2]))
    assert img.format == "PNG" and img.size == (64, 64)
    assert outs[1].info["seed"] == 2


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)), dtype=np.int16)


def test_a_seeded_job_renders_the_same_images_in_any_batch(engine: DiffusersEngine) -> None:
    alone = engine.run([job(seed=7, num_images=2)])[0]
    crowded = engine.run([job(seed=3, prompt="a cat"), job(seed=7, num_images=2)])[1]
    # the same noise and prompt: equal up to float rounding of batched kernels (<= 2 of 255)
    for a, b in zip(alone.images, crowded.images, strict=True):
        assert np.abs(pixels(a) - pixels(b)).max() <= 2
    differ = np.abs(pixels(alone.images[0]) - pixels(alone.images[1])).mean()
    assert differ > 5  # one generator per image: seed and seed + 1 give different images
    other = engine.run([job(seed=8)])[0].images[0]
    assert np.abs(pixels(other) - pixels(alone.images[0])).mean() > 5


def test_mixed_resolutions_are_refused(engine: DiffusersEngine) -> None:
    with pytest.raises(ValueError, match="share width"):
        engine.run([job(), job(width=128)])


def test_memory_options_and_provenance(tiny_models: Path) -> None:
    spec = ModelSpec(
        name="sd-tiny",
        kind="diffusion",
        dtype="float32",
        attention_slicing=True,
        vae_slicing=True,
        vae_tiling=True,
        cpu_offload=True,
    )
    e = DiffusersEngine("sd-tiny", tiny_models / "sd-tiny", spec)
    e.load("cpu")  # cpu_offload is ignored (with a warning) on a CPU
    assert len(e.run([job(seed=1)])[0].images) == 1
    d = e.describe()
    assert d["options"]["attention_slicing"] and d["weights"] and e.memory_bytes() > 0
