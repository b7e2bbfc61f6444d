"""The transformers engine on a tiny random Llama built at test time."""

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from engines.base import Output
from engines.early import on_finished
from engines.llm import MIN_SHARED_TOKENS, TransformersLLM
from pipelines.errors import ModelUnavailable
from pipelines.jobs import ChatMessage, LLMJob


@pytest.fixture(scope="module")
def engine(tiny_models: Path) -> TransformersLLM:
    e = TransformersLLM("tiny", tiny_models / "tiny", dtype="float32")
    e.load("cpu")
    return e


def test_one_output_per_job_in_order(engine: TransformersLLM) -> None:
    jobs = [
        LLMJob(model="tiny", prompt="the quick brown fox", max_new_tokens=3),
        LLMJob(model="tiny", messages=[ChatMessage(role="user", content="hi")], max_new_tokens=9),
        LLMJob(model="tiny", prompt="a", max_new_tokens=5),
    ]
    outs = engine.run(jobs)
    assert len(outs) == 3 and all(o.error is None for o in outs)
    assert [o.completion_tokens <= j.max_new_tokens for o, j in zip(outs, jobs, strict=True)] == [
        True
    ] * 3
    assert outs[1].completion_tokens == 9 or outs[1].finish_reason == "stop"
    assert outs[0].prompt_tokens > 0


def test_greedy_output_does_not_depend_on_batch_neighbours(engine: TransformersLLM) -> None:
    job = LLMJob(model="tiny", prompt="batch inference with queues", max_new_tokens=6)
    alone = engine.run([job])[0]
    crowded = engine.run([LLMJob(model="tiny", prompt="x " * 30, max_new_tokens=2), job])[1]
    assert alone.text == crowded.text


def run_watching_inputs(
    engine: TransformersLLM, jobs: list[LLMJob]
) -> tuple[list[Output], list[tuple[int, ...]]]:
    """The batch's outputs and the shape of the input ids of every forward call it made."""
    shapes: list[tuple[int, ...]] = []
    hook = engine.model.register_forward_pre_hook(
        lambda _m, _a, kw: shapes.append(tuple(kw["input_ids"].shape)), with_kwargs=True
    )
    try:
        return engine.run(jobs), shapes
    finally:
        hook.remove()


def test_a_prefix_shared_by_the_batch_is_computed_once_and_changes_no_text(
    engine: TransformersLLM,
) -> None:
    instruction = "you answer about batch inference with queues and workers, briefly: "
    jobs = [
        LLMJob(model="tiny", prompt=instruction + q, max_new_tokens=n)
        for q, n in [("what is the capital of france?", 7), ("the lazy dog", 5), ("fox", 9)]
    ]
    alone = [engine.run([job])[0] for job in jobs]
    together, shapes = run_watching_inputs(engine, jobs)
    assert [o.text for o in together] == [o.text for o in alone]
    assert [o.prompt_tokens for o in together] == [o.prompt_tokens for o in alone]
    assert [o.completion_tokens for o in together] == [o.completion_tokens for o in alone]
    # the shared prefix alone, once; then every row's own tokens, not the whole prompt again
    (one, prefix), (rows, own) = shapes[0], shapes[1]
    assert one == 1 and prefix >= MIN_SHARED_TOKENS and rows == 3
    assert own == max(o.prompt_tokens for o in alone) - prefix


def test_rows_without_a_long_shared_prefix_are_padded_whole(engine: TransformersLLM) -> None:
    outs, shapes = run_watching_inputs(
        engine,
        [
            LLMJob(model="tiny", prompt="the quick brown fox", max_new_tokens=2),
            LLMJob(model="tiny", prompt="the quick red fox", max_new_tokens=2),
        ],
    )
    assert shapes[0] == (2, max(o.prompt_tokens for o in outs))


def test_seeded_sampling_is_repeatable(engine: TransformersLLM) -> None:
    job = LLMJob(model="tiny", prompt="hello", max_new_tokens=8, temperature=1.0, seed=7)
    assert engine.run([job])[0].text == engine.run([job])[0].text


def test_stop_strings_cut_the_text(engine: TransformersLLM) -> None:
    free = engine.run([LLMJob(model="tiny", prompt="the lazy dog", max_new_tokens=12)])[0]
    assert free.text
    stop = free.text[len(free.text) // 2 :][:2] or free.text[-1]
    cut = engine.run([LLMJob(model="tiny", prompt="the lazy dog", max_new_tokens=12, stop=[stop])])[
        0
    ]
    assert stop not in (cut.text or "") and cut.finish_reason == "stop"
    assert free.text.startswith(cut.text or "")


def test_a_job_too_long_for_the_context_fails_alone(engine: TransformersLLM) -> None:
    jobs = [
        LLMJob(model="tiny", prompt="word " * 400, max_new_tokens=200),
        LLMJob(model="tiny", prompt="short", max_new_tokens=2),
    ]
    bad, good = engine.run(jobs)
    assert bad.error and "context" in bad.error
    assert good.error is None and good.text is not None


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    e = TransformersLLM("ghost", tmp_path / "nowhere")
    with pytest.raises(ModelUnavailable, match="ghost"):
        e.load("cpu")


def test_a_seeded_sampled_job_gives_the_same_text_in_any_batch(engine: TransformersLLM) -> None:
    job = LLMJob(
        model="tiny", prompt="queues", max_new_tokens=10, temperature=1.2, top_p=0.9, seed=3
    )
    alone = engine.run([job])[0]
    neighbours = [
        LLMJob(model="tiny", prompt="a b c d e f", max_new_tokens=4, temperature=0.7, seed=1),
        LLMJob(model="tiny", prompt="x", max_new_tokens=12),
    ]
    crowded = engine.run([neighbours[0], job, neighbours[1]])[1]
    assert alone.text == crowded.text and alone.info["seed"] == 3
    other_seed = engine.run([job.model_copy(update={"seed": 4})])[0]
    assert other_seed.text != alone.text  # the seed matters


def test_unseeded_sampling_records_the_seed_it_used(engine: TransformersLLM) -> None:
    job = LLMJob(model="tiny", prompt="queues", max_new_tokens=6, temperature=1.0)
    out = engine.run([job])[0]
    again = engine.run([job.model_copy(update={"seed": out.info["seed"]})])[0]
    assert isinstance(out.info["seed"], int) and again.text == out.text


def test_dynamic_int8_quantisation_runs_and_shrinks_the_weights(tiny_models: Path) -> None:
    plain = TransformersLLM("tiny", tiny_models / "tiny", dtype="float32")
    plain.load("cpu")
    small = TransformersLLM("tiny", tiny_models / "tiny", dtype="float32", quantize="int8")
    small.load("cpu")
    out = small.run([LLMJob(model="tiny", prompt="hello", max_new_tokens=4)])[0]
    assert out.error is None and out.completion_tokens > 0
    assert small.memory_bytes() < plain.memory_bytes()
    assert small.describe()["quantize"] == "int8"


def test_batch_invariant_mode_gives_each_job_its_text_alone_in_any_batch(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from blaze.dev.tiny_models import make_tiny_llm

    # sharp random weights: the next token depends on the input, so rounding differences
    # between batch shapes show as different texts
    folder = make_tiny_llm(
        tmp_path_factory.mktemp("sharp") / "sharp", hidden_size=128, init_range=1.0
    )
    prompts = [
        "what is the capital of france?",
        "the quick brown fox",
        "batch inference with queues and workers, briefly",
        "fox",
        "the lazy dog jumps over the quick brown fox again and again",
        "paris",
        "workers",
    ]
    jobs = [
        LLMJob(model="sharp", messages=[ChatMessage(role="user", content=p)], max_new_tokens=12)
        for p in prompts
    ]

    def texts(e: TransformersLLM, size: int) -> list[str | None]:
        return [o.text for i in range(0, len(jobs), size) for o in e.run(jobs[i : i + size])]

    fast = TransformersLLM("sharp", folder, dtype="bfloat16")
    fast.load("cpu")
    exact = TransformersLLM("sharp", folder, dtype="bfloat16", batch_invariant=True)
    exact.load("cpu")
    assert exact.describe()["dtype"] == "float32" and exact.describe()["batch_invariant"]
    alone = texts(exact, 1)
    for size in (2, 3, 7):
        assert texts(exact, size) == alone, f"batch_invariant changed a text in batches of {size}"
    # the check has teeth: rounding changes these texts (bfloat16's does, on any CPU; on this
    # one a batch of 7 in bfloat16 also changes one text against bfloat16 alone)
    assert sum(a != b for a, b in zip(texts(fast, 7), alone, strict=True)) >= 2


def test_the_shared_prefix_is_computed_apart_in_float32_only(tiny_models: Path) -> None:
    instruction = "you answer about batch inference with queues and workers, briefly: "
    jobs = [LLMJob(model="tiny", prompt=instruction + q, max_new_tokens=2) for q in ("a", "b")]
    half = TransformersLLM("tiny", tiny_models / "tiny", dtype="bfloat16")
    half.load("cpu")
    _, shapes = run_watching_inputs(half, jobs)
    assert shapes[0][0] == 2  # whole rows, no separate prefix call


def test_auto_dtype_is_bfloat16_only_where_the_cpu_computes_it() -> None:
    from engines.base import cpu_has_bf16, resolve_dtype

    assert cpu_has_bf16("processor: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_tile\n")
    assert cpu_has_bf16("Features\t: fp asimd bf16 i8mm\n")  # Arm
    assert not cpu_has_bf16("flags\t\t: fpu sse avx2 fma\n")  # an AVX2-only EPYC
    assert resolve_dtype("float16", "cpu") == "float16"  # a named dtype is kept
    assert resolve_dtype("auto", "cpu") == ("bfloat16" if cpu_has_bf16() else "float32")


def test_continuous_generation_ends_each_row_at_its_own_limit(tiny_models: Path) -> None:
    e = TransformersLLM("tiny", tiny_models / "tiny", dtype="float32", generation="continuous")
    e.load("cpu")
    try:
        jobs = [
            LLMJob(model="tiny", prompt="the quick brown fox", max_new_tokens=n)
            for n in (2, 9, 5, 17)
        ]
        sampled = LLMJob(model="tiny", prompt="hello", max_new_tokens=6, temperature=1.0, seed=7)
        stopped = LLMJob(model="tiny", prompt="the lazy dog", max_new_tokens=12, stop=["zzz"])
        heard: list[tuple[str, Output]] = []
        with on_finished(lambda job_id, out: heard.append((job_id, out))):
            outs = e.run([*jobs, sampled, stopped])
        assert all(o.error is None for o in outs)
        # each continuous row is reported the step it ends, with the output it returns
        assert dict(heard) == {j.job_id: o for j, o in zip(jobs, outs[:4], strict=True)}
        assert heard[0][0] == jobs[0].job_id  # 2 tokens: the first to end
        for job, o in zip(jobs, outs[:4], strict=True):
            assert o.completion_tokens <= job.max_new_tokens and o.text is not None
            assert o.completion_tokens == job.max_new_tokens or o.finish_reason == "stop"
        # sampled rows and rows with stop strings run on the static path: the same text as
        # a static engine gives them
        static = TransformersLLM("tiny", tiny_models / "tiny", dtype="float32")
        static.load("cpu")
        assert outs[4].text == static.run([sampled])[0].text
        assert outs[5].text == static.run([stopped])[0].text
        assert e.describe()["generation"] == "continuous"
        again = e.run(jobs[:2])  # the loop serves batch after batch
        assert [o.completion_tokens for o in again] == [o.completion_tokens for o in outs[:2]]
    finally:
        e.close()
    assert e.continuous is None


def test_continuous_refills_slots_and_gives_each_job_its_static_text_in_float32(
    tiny_models: Path,
) -> None:
    e = TransformersLLM(
        "tiny", tiny_models / "tiny2", dtype="float32", generation="continuous", max_rows=3
    )
    e.load("cpu")
    static = TransformersLLM("tiny", tiny_models / "tiny2", dtype="float32")
    static.load("cpu")
    prompts = ["the quick brown fox", "a", "batch inference with queues and workers", "paris"]
    jobs = [
        LLMJob(model="tiny", prompt=p + " " * (i % 3), max_new_tokens=n)
        for i, (p, n) in enumerate((p, n) for n in (3, 20, 7, 12) for p in prompts)
    ]
    steps: list[int] = []
    hook = e.model.register_forward_pre_hook(
        lambda _m, _a, kw: steps.append(kw["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        got = e.run(jobs)
    finally:
        hook.remove()
    want = [static.run([j])[0] for j in jobs]
    assert [o.text for o in got] == [o.text for o in want]
    assert [o.finish_reason for o in got] == [o.finish_reason for o in want]
    assert max(steps) <= 3  # never more rows at once than max_rows, 16 jobs through 3 slots
    assert sum(steps) < sum(j.max_new_tokens for j in jobs) + len(jobs)  # no step for done rows


def test_continuous_calls_from_two_threads_share_the_running_batch(tiny_models: Path) -> None:
    """Two batches in hand (two threads): the second batch's rows take the slots the first
    one's finished rows leave, before its longest row ends; every job keeps its static
    float32 text and each call hears only of its own rows, in its own thread."""
    e = TransformersLLM(
        "tiny", tiny_models / "tiny2", dtype="float32", generation="continuous", max_rows=4
    )
    e.load("cpu")
    static = TransformersLLM("tiny", tiny_models / "tiny2", dtype="float32")
    static.load("cpu")
    first = [
        LLMJob(model="tiny", prompt=f"first {i}", max_new_tokens=n)
        for i, n in enumerate((2, 3, 4, 40))
    ]
    second = [LLMJob(model="tiny", prompt=f"second batch {i}", max_new_tokens=5) for i in range(6)]
    rows: list[int] = []
    second_waits = threading.Event()

    def step(_m: object, _a: object, kw: dict[str, Any]) -> None:
        rows.append(kw["input_ids"].shape[0])
        if len(rows) == 3 and threading.current_thread().name == "first":
            second_waits.set()  # the second batch arrives while the first one runs
            time.sleep(0.5)

    hook = e.model.register_forward_pre_hook(step, with_kwargs=True)
    got: dict[str, list[Output]] = {}
    heard: dict[str, list[tuple[str, str]]] = {"first": [], "second": []}
    ended: dict[str, float] = {}

    def call(name: str, jobs: list[LLMJob]) -> None:
        me = threading.current_thread().name
        if name == "second":
            second_waits.wait(30)
        with on_finished(lambda job_id, _out: heard[name].append((job_id, me))):
            got[name] = e.run(jobs)
        ended[name] = time.monotonic()

    threads = [
        threading.Thread(target=call, args=(n, j), name=n)
        for n, j in (("first", first), ("second", second))
    ]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        hook.remove()
        e.close()
    for name, jobs in (("first", first), ("second", second)):
        want = [static.run([j])[0] for j in jobs]
        assert [o.text for o in got[name]] == [o.text for o in want], name
        assert {j for j, _ in heard[name]} == {j.job_id for j in jobs}
        assert {t for _, t in heard[name]} == {name}  # heard in the caller's own thread
    assert max(rows) <= 4
    # the second batch's 6 short rows ran beside the first batch's long row and ended first;
    # one by one, the two calls would have taken at least 40 + 5 steps
    assert got["first"][3].completion_tokens == 40
    assert ended["second"] < ended["first"]
    assert len(rows) < 45


def test_a_failed_continuous_step_fails_the_call_and_leaves_the_engine_usable(
    tiny_models: Path,
) -> None:
    e = TransformersLLM("tiny", tiny_models / "tiny2", dtype="float32", generation="continuous")
    e.load("cpu")
    jobs = [LLMJob(model="tiny", prompt=f"row {i}", max_new_tokens=8) for i in range(3)]
    calls: list[int] = []

    def flaky(_m: object, _a: object) -> None:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("device error")

    hook = e.model.register_forward_pre_hook(flaky)
    try:
        with pytest.raises(RuntimeError, match="device error"):
            e.run(jobs)  # the worker isolates and reruns, as after a failed static batch
        again = e.run(jobs)
    finally:
        hook.remove()
        e.close()
    static = TransformersLLM("tiny", tiny_models / "tiny2", dtype="float32")
    static.load("cpu")
    assert [o.text for o in again] == [static.run([j])[0].text for j in jobs]
