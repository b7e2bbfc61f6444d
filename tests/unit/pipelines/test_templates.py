"""Pipeline templates: the shipped ones validate, bad ones are named, expressions stay safe."""

from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines.templates.expressions import ExpressionError, evaluate, parse, text_template
from pipelines.templates.spec import (
    TemplateError,
    load_template,
    parse_template,
    resolve_params,
    template_files,
)


def test_the_shipped_templates_are_valid() -> None:
    names = {load_template(p).name for p in template_files()}
    assert names == {"bulk_llm", "prompt_to_images", "screened_generation"}


def base() -> dict[str, Any]:
    return {
        "name": "t",
        "params": {"model": {"type": "string", "default": "tiny"}},
        "steps": [
            {"id": "ask", "kind": "llm", "model": "{params.model}", "prompt": "hi"},
            {
                "id": "route",
                "kind": "branch",
                "cases": [{"when": "len(steps.ask.text) > 3", "then": ["long"]}],
                "otherwise": ["short"],
            },
            {"id": "long", "kind": "format", "after": ["route"], "template": "{steps.ask.text}"},
            {"id": "short", "kind": "format", "after": ["route"], "template": "short"},
        ],
    }


def broken(path: str, value: Any) -> dict[str, Any]:
    doc = base()
    target: Any = doc
    keys = path.split("/")
    for key in keys[:-1]:
        target = target[int(key)] if key.isdigit() else target[key]
    last = keys[-1]
    if last.isdigit():
        target[int(last)] = value
    else:
        target[last] = value
    return doc


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (
            "steps/0/kind",
            "teleport",
            "t.yaml, step 'ask', field 'kind': unknown step kind 'teleport'",
        ),
        ("steps/0/model", "{params.modle}", "field 'model': unknown parameter 'modle'"),
        (
            "steps/1/cases/0/when",
            "len(steps.asked.text) > 3",
            "step 'route', field 'cases[0].when': unknown step 'asked'",
        ),
        (
            "steps/1/cases/0/when",
            "__import__('os').system('x')",
            "step 'route', field 'cases[0].when': calling \"__import__('os').system\" is not",
        ),
        ("steps/1/cases/0/when", "steps.ask.__class__", "attribute '__class__' is not allowed"),
        ("steps/1/cases/0/when", "[x for x in steps]", "ListComp is not allowed"),
        ("steps/1/cases/0/when", "lambda: 1", "Lambda is not allowed"),
        ("steps/1/cases/0/when", "open('/etc/passwd')", "calling 'open' is not allowed"),
        ("steps/1/cases/0/when", "len(steps.long.text) > 1", "'long' does not run before 'route'"),
        ("steps/1/cases/0/when", "steps.ask.images", "a llm step has no output 'images'"),
        ("steps/2/after", ["ask"], "step 'long', field 'after': a target of branch 'route'"),
        ("steps/0/max_tokens", [1], "step 'ask', field 'max_tokens'"),
        ("steps/2/template", "{item}", "'item' and 'index' exist only in per-item fields"),
        ("steps/3/id", "ask", "step 'ask', field 'id': the id is used twice"),
    ],
)
def test_bad_templates_name_the_file_step_and_field(path: str, value: Any, message: str) -> None:
    with pytest.raises(TemplateError) as err:
        parse_template(broken(path, value), "t.yaml")
    assert message in str(err.value)


def test_a_bad_file_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(TemplateError, match=r"bad\.yaml: not valid YAML"):
        load_template(bad)
    bad.write_text(yaml.safe_dump({"name": "x", "steps": []}))
    with pytest.raises(TemplateError, match=r"bad\.yaml, field 'steps'"):
        load_template(bad)


def test_parameters_are_checked_and_coerced() -> None:
    t = parse_template(
        {
            "name": "p",
            "params": {
                "n": {"type": "integer", "default": 2},
                "items": {"type": "array"},
                "flag": {"type": "boolean", "default": False},
            },
            "steps": [{"id": "s", "kind": "format", "template": "{params.n}"}],
        },
        "p.yaml",
    )
    assert resolve_params(t, {"n": "5", "items": '["a"]', "flag": "yes"}) == {
        "n": 5,
        "items": ["a"],
        "flag": True,
    }
    with pytest.raises(TemplateError, match="missing parameter 'items'"):
        resolve_params(t, {})
    with pytest.raises(TemplateError, match="parameter 'n' must be integer"):
        resolve_params(t, {"n": "many", "items": []})
    with pytest.raises(TemplateError, match="unknown parameter 'm'"):
        resolve_params(t, {"m": 1, "items": []})


def test_expressions_do_what_templates_need() -> None:
    ctx = {
        "params": {"threshold": 0.5, "tpl": "Q: {question}"},
        "steps": {"screen": {"texts": ["ALLOW fine", "DENY: weapons", "score 0.7"]}, "gone": None},
        "item": {"question": "why?"},
        "index": 1,
    }

    def ev(text: str) -> Any:
        return evaluate(parse(text), ctx)

    assert ev("startswith(upper(steps.screen.texts[index]), 'DENY')") is True
    assert ev("number(steps.screen.texts[2]) >= params.threshold") is True
    assert ev("contains(steps.screen.texts[1], 'weapon') and not contains('x', 'y')") is True
    assert ev("steps.gone.key if steps.gone else 'none'") == "none"
    assert ev("format(params.tpl, item)") == "Q: why?"
    assert ev("pick(steps.screen.texts, [0, 2])") == ["ALLOW fine", "score 0.7"]
    assert ev("len(range(3)) == 3 and get(item, 'missing', 7) == 7")
    assert text_template("{{literal}} {index + 1}").render(ctx) == "{literal} 2"
    with pytest.raises(ExpressionError, match="failed"):
        ev("steps.screen.texts[9]")
    with pytest.raises(ExpressionError, match="range"):
        ev("range(100000)")
