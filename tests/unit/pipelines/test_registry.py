from pathlib import Path

import pytest

from pipelines.errors import ConfigError
from pipelines.registry import DEMO_MODEL, load_registry, parse_registry
from pipelines.settings import BlazeSettings


def settings_for(tmp_path: Path) -> BlazeSettings:
    return BlazeSettings(models_dir=tmp_path / "models", registry_file=tmp_path / "models.yaml")


def test_file_entries_folders_and_demo_model(tmp_path: Path) -> None:
    (tmp_path / "models" / "found").mkdir(parents=True)
    (tmp_path / "models" / "found" / "config.json").write_text("{}")
    (tmp_path / "models.yaml").write_text(
        "models:\n"
        "  big:\n    source: /data/big\n    max_batch_size: 32\n    devices: [cuda:0, cuda:1]\n"
        "  sd:\n    kind: diffusion\n    max_wait_s: 2\n"
        "  noop:\n    engine: echo\n"
    )
    s = settings_for(tmp_path)
    reg = load_registry(s)
    assert reg.names() == sorted(["big", "sd", "noop", "found", DEMO_MODEL])
    big = reg.specs["big"]
    assert big.batch_limits(s) == (32, s.batch.max_wait_s) and big.folder(s) == Path("/data/big")
    assert reg.specs["sd"].engine_name == "diffusers" and reg.specs["noop"].engine_name == "echo"
    assert reg.specs["found"].folder(s) == tmp_path / "models" / "found"
    assert reg.devices() == ["cpu", "cuda:0", "cuda:1"]


@pytest.mark.parametrize(
    "doc, named",
    [
        ({"models": {"m": {"kind": "video"}}}, "model 'm': field 'kind'"),
        ({"models": {"m": {"max_batch_size": 0}}}, "model 'm': field 'max_batch_size'"),
        ({"models": {"m": {"devices": ["gpu0"]}}}, "model 'm': field 'devices'"),
        ({"models": {"m": {"colour": "red"}}}, "model 'm': field 'colour'"),
        ({"models": {"bad/name": {}}}, "model 'bad/name': field 'name'"),
        ({"models": {"m": "x"}}, "model 'm': expected a mapping"),
        ({"modles": {}}, "unknown top-level key"),
        (["x"], "expected a mapping"),
    ],
)
def test_bad_entries_name_the_file_entry_and_field(doc: object, named: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_registry(doc, "reg.yaml")
    assert str(info.value).startswith("reg.yaml: ") and named in str(info.value)


def test_unreadable_yaml_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "models.yaml").write_text("models: [unclosed\n")
    with pytest.raises(ConfigError, match=r"models\.yaml: cannot read the model registry"):
        load_registry(settings_for(tmp_path))
