import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.errors import InvalidJob
from pipelines.jobs import LLMJob, parse_job, validate_job
from pipelines.stores.deadletters import DeadLetter, Source

SRC = Source("blaze.jobs.llm", 2, 41)


def test_prompt_job_gets_defaults_and_an_id() -> None:
    job = validate_job({"model": "tiny", "prompt": "hi"})
    assert job.kind == "llm" and job.max_new_tokens == 64 and job.temperature == 0.0
    assert job.job_id and "/" not in job.job_id


def test_chat_job() -> None:
    job = validate_job({"model": "tiny", "messages": [{"role": "user", "content": "hi"}]})
    assert job.messages is not None and job.messages[0].role == "user"


@pytest.mark.parametrize(
    "data, field",
    [
        ({"model": "tiny"}, "prompt"),
        (
            {"model": "tiny", "prompt": "a", "messages": [{"role": "user", "content": "b"}]},
            "prompt",
        ),
        ({"model": "tiny", "prompt": "a", "max_new_tokens": 0}, "max_new_tokens"),
        ({"model": "tiny", "prompt": "a", "max_new_tokens": 100_000}, "max_new_tokens"),
        ({"model": "tiny", "prompt": "a", "temperature": -1}, "temperature"),
        ({"model": "tiny", "prompt": "x" * 40_000}, "prompt"),
        ({"model": "../etc", "prompt": "a"}, "model"),
        ({"model": "tiny", "prompt": "a", "job_id": "../../escape"}, "job_id"),
        ({"model": "tiny", "prompt": "a", "job_id": "a/b"}, "job_id"),
        ({"model": "tiny", "prompt": "a", "job_id": "a..b"}, "job_id"),
        ({"model": "tiny", "prompt": "a", "job_id": "x" * 129}, "job_id"),
        ({"model": "tiny", "prompt": "a", "surprise": 1}, "surprise"),
        ({"model": "tiny", "messages": [{"role": "robot", "content": "b"}]}, "messages"),
    ],
)
def test_invalid_jobs_name_the_field(data: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidJob) as info:
        validate_job(data)
    assert field in str(info.value)


def test_parse_valid_message() -> None:
    raw = LLMJob(model="tiny", prompt="hi", job_id="j-1").model_dump_json().encode()
    job = parse_job(raw, "llm", SRC)
    assert isinstance(job, LLMJob) and job.job_id == "j-1"


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"{not json", "invalid JSON"),
        (b"\xff\xfe", "invalid JSON"),
        (b"", "invalid JSON"),
        (None, "invalid JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (b'"text"', "expected a JSON object"),
        (b'{"job_id": "j-2", "model": "tiny"}', "prompt"),
        (b'{"job_id": "j-3", "kind": "diffusion", "model": "m", "prompt": "p"}', "kind"),
    ],
)
def test_bad_messages_become_dead_letters(raw: bytes | None, reason: str) -> None:
    dead = parse_job(raw, "llm", SRC)
    assert isinstance(dead, DeadLetter)
    assert reason in dead.reason and dead.stage == "intake" and dead.source == SRC
    body = json.loads(dead.to_json())
    assert body["source"] == {"topic": "blaze.jobs.llm", "partition": 2, "offset": 41}


def test_dead_letter_keeps_job_id_and_truncates_payload() -> None:
    raw = json.dumps({"job_id": "j-9", "model": "tiny", "prompt": 7, "pad": "x" * 10_000}).encode()
    dead = parse_job(raw, "llm", SRC)
    assert isinstance(dead, DeadLetter)
    assert dead.job_id == "j-9" and len(dead.payload) == 4096
    assert dead.errors and all("input" not in e for e in dead.errors)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.text(max_size=200).map(str.encode)))
def test_parse_never_raises(raw: bytes) -> None:
    assert isinstance(parse_job(raw, "llm", SRC), LLMJob | DeadLetter)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            ["job_id", "model", "prompt", "messages", "max_new_tokens", "stop", "tags"]
        ),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=20),
            lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
            max_leaves=8,
        ),
    )
)
def test_parse_random_objects_never_raises(data: dict[str, object]) -> None:
    assert isinstance(parse_job(json.dumps(data).encode(), "llm", SRC), LLMJob | DeadLetter)


def test_diffusion_job_bounds() -> None:
    job = validate_job({"model": "sd", "prompt": "a cat", "num_images": 2}, "diffusion")
    assert job.kind == "diffusion" and job.width == 512
    for bad, field in [
        ({"width": 100}, "width"),  # not a multiple of 8
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"num_images": 9}, "num_images"),
        ({"width": 2048, "height": 2048, "num_images": 4}, "pixels"),
        ({"guidance_scale": 99}, "guidance_scale"),
    ]:
        with pytest.raises(InvalidJob) as info:
            validate_job({"model": "sd", "prompt": "a cat", **bad}, "diffusion")
        assert field in str(info.value)


def test_job_schema_is_published_for_every_kind() -> None:
    from pipelines.jobs import JOB_MODELS

    for kind, model in JOB_MODELS.items():
        schema = model.model_json_schema()
        assert schema["properties"]["kind"]["const"] == kind
        assert "model" in schema["required"]


def test_embed_job_bounds() -> None:
    job = validate_job({"model": "m", "texts": ["a", "b"]}, "embed")
    assert job.kind == "embed" and job.normalize
    for bad, field in [
        ({"texts": []}, "texts"),
        ({"texts": [""]}, "texts"),
        ({"texts": ["x"] * 257}, "texts"),
        ({"texts": "a"}, "texts"),
    ]:
        with pytest.raises(InvalidJob) as info:
            validate_job({"model": "m", **bad}, "embed")
        assert field in str(info.value)
