"""Result cache keys: one per job, and it changes whenever anything that changes the answer does.

A key hashes the job kind, the model's weights digest, the engine and its version, the engine
options that change outputs (dtype, quantisation, batch invariance, generation mode), the inputs
(prompt or chat messages, texts, diffusion prompt and sizes) and every sampling parameter with
the seed. Chat messages are hashed as given rather than after the chat template: the template is
a function of the messages and of the tokenizer files, which the weights digest covers.

Only deterministic jobs have a key: greedy LLM jobs (their seed and ``top_p`` do not change the
answer and are left out), sampled ones with an explicit seed, embeddings, and diffusion jobs
with an explicit seed. A job that opts out (``cache: false``) or whose model does has none.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
from importlib import metadata
from pathlib import Path
from typing import Any

from pipelines.errors import ModelUnavailable
from pipelines.jobs import AnyJob, DiffusionJob, EmbedJob, LLMJob
from pipelines.registry import ModelSpec, wheel_file
from pipelines.settings import BlazeSettings

log = logging.getLogger(__name__)

KEY_VERSION = 1
"""Bump when the engines' outputs change for the same inputs and options (or the key's shape
changes): every earlier entry then misses."""
NO_WEIGHTS = "sha256:" + "0" * 64
"""The digest of a model without weight files (the echo engine)."""
_ENGINE_PACKAGES = {
    "transformers": ("transformers", "torch"),
    "diffusers": ("diffusers", "transformers", "torch"),
}
_DIGESTS_FILE = ".digests.json"
_lock = threading.Lock()
_digests: dict[str, str | None] = {}


def uncacheable(job: AnyJob, spec: ModelSpec) -> str | None:
    """Why ``job`` has no cache key, or None when it may have one."""
    if not job.cache:
        return "the job opted out (cache: false)"
    if not spec.cache:
        return f"model {spec.name!r} has the cache turned off"
    if isinstance(job, LLMJob) and job.temperature > 0 and job.seed is None:
        return "a sampled job without a seed"
    if isinstance(job, DiffusionJob) and job.seed is None:
        return "a diffusion job without a seed"
    return None


def cache_key(job: AnyJob, spec: ModelSpec, digest: str, engine: str) -> str | None:
    """The job's key (hex sha256), or None when it must not be cached (``uncacheable``).

    ``digest`` is the weights digest (``weights_digest``), ``engine`` the engine's name and
    version (``engine_version``)."""
    if uncacheable(job, spec) is not None:
        return None
    material: dict[str, Any] = {
        "v": KEY_VERSION,
        "kind": job.kind,
        "weights": digest,
        "engine": engine,
        "options": {
            "dtype": spec.dtype,
            "quantize": spec.quantize,
            "batch_invariant": spec.batch_invariant,
            "generation": spec.generation,
            "attention_slicing": spec.attention_slicing,
            "vae_slicing": spec.vae_slicing,
            "vae_tiling": spec.vae_tiling,
        },
        "input": _inputs(job),
    }
    canonical = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _inputs(job: AnyJob) -> dict[str, Any]:
    if isinstance(job, LLMJob):
        out: dict[str, Any] = {
            "prompt": job.prompt,
            "messages": None if job.messages is None else [m.model_dump() for m in job.messages],
            "max_new_tokens": job.max_new_tokens,
            "stop": list(job.stop),
            "temperature": job.temperature,
        }
        if job.temperature > 0:  # greedy decoding reads neither
            out.update(top_p=job.top_p, seed=job.seed)
        return out
    if isinstance(job, EmbedJob):
        return {"texts": list(job.texts), "normalize": job.normalize}
    return job.model_dump(
        mode="json",
        include={
            "prompt",
            "negative_prompt",
            "width",
            "height",
            "num_inference_steps",
            "guidance_scale",
            "num_images",
            "seed",
        },
    )


def engine_version(spec: ModelSpec) -> str:
    """The engine's name and the versions of the packages that compute its outputs."""
    name = spec.engine_name
    parts = [f"{name}/{KEY_VERSION}"]
    for package in _ENGINE_PACKAGES.get(name, ()):
        try:
            parts.append(f"{package}=={metadata.version(package)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{package}==none")
    if ":" in name:  # a custom engine: its own package's version
        top = name.split(".", 1)[0].split(":", 1)[0]
        with contextlib.suppress(metadata.PackageNotFoundError):
            parts.append(f"{top}=={metadata.version(top)}")
    return " ".join(parts)


def weights_digest(settings: BlazeSettings, spec: ModelSpec) -> str | None:
    """``sha256:HEX`` over the model's files (names, sizes, contents), or the declared
    ``digest``; None when this host holds no files of the model (its jobs are not cached
    here). File hashes are remembered beside the models (``models_dir/.digests.json``) by
    path, size and modification time, so a big model is read once per change, not per start."""
    if spec.digest:
        return spec.digest
    if spec.engine_name == "echo":
        return NO_WEIGHTS
    with _lock:
        if spec.name in _digests:
            return _digests[spec.name]
        root = _files_of(settings, spec)
        digest = None if root is None else _digest(settings, root)
        if digest is None:
            log.warning("model %s: no files on this host; its jobs are not cached", spec.name)
        _digests[spec.name] = digest
        return digest


def forget_digests() -> None:
    """Drop remembered digests (tests; a model replaced in place)."""
    with _lock:
        _digests.clear()


def _files_of(settings: BlazeSettings, spec: ModelSpec) -> Path | None:
    folder = spec.folder(settings)
    if folder.is_dir() and any(folder.iterdir()):
        return folder
    if spec.source_kind == "wheel" and spec.source:
        try:
            return wheel_file(spec.source)
        except ModelUnavailable:
            return None
    return None


def _digest(settings: BlazeSettings, root: Path) -> str:
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    memo_path = settings.models_dir / _DIGESTS_FILE
    try:
        memo: dict[str, str] = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    total = hashlib.sha256()
    changed = False
    for path in files:
        rel = path.name if root.is_file() else path.relative_to(root).as_posix()
        if any(part.startswith(".") for part in Path(rel).parts):
            continue
        st = path.stat()
        stamp = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
        digest = memo.get(stamp)
        if digest is None:
            h = hashlib.sha256()
            with path.open("rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            digest = memo[stamp] = h.hexdigest()
            changed = True
        total.update(f"{rel}\0{st.st_size}\0{digest}\n".encode())
    if changed:
        try:
            memo_path.parent.mkdir(parents=True, exist_ok=True)
            memo_path.write_text(json.dumps(memo))
        except OSError as exc:  # a read-only models folder: hash again next start
            log.info("could not remember weight digests in %s: %s", memo_path, exc)
    return "sha256:" + total.hexdigest()
