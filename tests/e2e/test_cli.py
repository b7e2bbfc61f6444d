"""Blaze as a user runs it: the CLI, separate processes, plain S3 and Kafka clients."""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer

from tests.e2e.conftest import User, echo_fleet, stack_s3, wait_for_line

pytestmark = pytest.mark.e2e


def test_user_runs_jobs_from_kafka_to_s3(user: User, tmp_path: Path) -> None:
    ports = user.ports  # type: ignore[attr-defined]
    user.ok("stack", "up", timeout=120)
    again = user.ok("stack", "up", timeout=60)
    assert again.count("already running") == 3
    assert "healthy" in user.ok("stack", "status")

    user.ok("models", "make-tiny", str(tmp_path / "models" / "tiny"))
    assert "tiny" in user.ok("models", "list").split()
    worker = user.start(
        "worker",
        "--device",
        "cpu",
        "--model",
        "tiny",
        "--dtype",
        "float32",
        log=tmp_path / "worker.log",
    )
    consumer = user.start("consume", log=tmp_path / "consumer.log")
    wait_for_line(tmp_path / "worker.log", "ready", 90)
    wait_for_line(tmp_path / "consumer.log", "intake joined group", 90)

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"prompt": f"tell me about {i}", "max_new_tokens": 4}) + "\n"
            for i in range(19)
        )
    )
    ids = user.ok("submit", "llm", "--model", "tiny", "--file", str(prompts)).split()
    ids += user.ok("submit", "llm", "--model", "tiny", "--prompt", "hello", "--chat").split()
    assert len(ids) == 20 and len(set(ids)) == 20

    kafka = f"127.0.0.1:{ports['kafka_port']}"
    producer = KafkaProducer(bootstrap_servers=kafka)
    for bad in (
        b"not json at all",
        b'{"job_id": "e2e-bad", "model": "tiny"}',
        b'{"model": "tiny", "prompt": 5}',
    ):
        producer.send("e2e.jobs.llm", bad)
    producer.flush()
    producer.close()

    done = user.run("wait", *ids, "--timeout", "120", timeout=150)
    assert done.returncode == 0, done.stderr
    assert "20 succeeded, 0 not" in done.stdout
    status = json.loads(user.ok("status", ids[0], "--json"))
    assert status[ids[0]]["state"] == "succeeded"

    s3 = stack_s3(user)
    for jid in ids:
        body = json.loads(s3.get_object("blaze-results", f"e2e/jobs/{jid}/result.json").read())
        assert (
            body["job_id"] == jid
            and body["status"] == "succeeded"
            and isinstance(body["text"], str)
        )

    letters = []
    dlq = KafkaConsumer(
        "e2e.dead-letter",
        bootstrap_servers=kafka,
        auto_offset_reset="earliest",
        consumer_timeout_ms=8000,
    )
    for msg in dlq:
        letters.append(json.loads(msg.value))
    dlq.close()
    assert len(letters) == 3
    assert all(d["reason"] and d["source"]["topic"] == "e2e.jobs.llm" for d in letters)
    assert "e2e-bad" in {d["job_id"] for d in letters}

    for proc in (consumer, worker):
        proc.send_signal(signal.SIGTERM)
    assert consumer.wait(60) == 0 and worker.wait(60) == 0

    # data survives a restart of the whole stack
    assert "stopped" in user.ok("stack", "down", timeout=60)
    assert user.run("stack", "status").returncode == 1
    user.ok("stack", "up", timeout=120)
    body = json.loads(s3.get_object("blaze-results", f"e2e/jobs/{ids[5]}/result.json").read())
    assert body["job_id"] == ids[5]
    assert json.loads(user.ok("status", ids[5], "--json"))[ids[5]]["state"] == "succeeded"
    dlq = KafkaConsumer(
        "e2e.dead-letter",
        bootstrap_servers=kafka,
        auto_offset_reset="earliest",
        consumer_timeout_ms=8000,
    )
    assert len(list(dlq)) == 3
    dlq.close()


def test_bad_arguments_and_unreachable_services_are_one_clear_line(
    user: User, tmp_path: Path
) -> None:
    cases = [
        (["submit", "llm", "--model", "tiny"], 2, "give exactly one of --prompt or --file"),
        (
            ["submit", "llm", "--model", "tiny", "--prompt", "x", "--max-new-tokens", "0"],
            2,
            "max_new_tokens",
        ),
        (["submit", "llm", "--model", "../x", "--prompt", "x"], 2, "model"),
        (
            ["submit", "llm", "--model", "tiny", "--file", str(tmp_path / "none.jsonl")],
            2,
            "none.jsonl",
        ),
        (["worker", "--device", "tpu"], 2, "--device"),
        (["wait", "abc", "--timeout", "-1"], 2, "--timeout"),
        (["no-such-command"], 2, "no-such-command"),
        (
            ["submit", "llm", "--model", "tiny", "--prompt", "x"],
            1,
            "Kafka is not reachable at 127.0.0.1:",
        ),
        (["status", "abc"], 1, "Redis is not reachable at redis://127.0.0.1:"),
    ]
    for args, code, text in cases:
        res = user.run(*args, timeout=60)
        assert res.returncode == code, (args, res.stdout, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("blaze: error") and text in lines[0], (
            args,
            res.stderr,
        )
    bad_env = User({**user.env, "BLAZE_KAFKA__PARTITIONS": "zero"}, tmp_path)
    res = bad_env.run("status", "x")
    assert res.returncode == 2 and "BLAZE_KAFKA__PARTITIONS" in res.stderr


def test_a_taken_port_is_named(user: User) -> None:
    ports = user.ports  # type: ignore[attr-defined]
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports["redis_port"]))
        s.listen()
        res = user.run("stack", "up", timeout=120)
    assert res.returncode == 1
    assert f"port {ports['redis_port']}" in res.stderr and "redis" in res.stderr


def test_user_warms_the_cache_and_rolls_a_model_version_out(user: User, tmp_path: Path) -> None:
    echo_fleet(user, tmp_path, "    max_batch_size: 8\n    max_wait_s: 0.2\n")
    known = tmp_path / "known.jsonl"
    rows = [{"prompt": f"known question {i}", "max_new_tokens": 8} for i in range(5)]
    rows.append({"prompt": "sampled, no seed", "temperature": 0.7})
    known.write_text("".join(json.dumps(r) + "\n" for r in rows))

    first = user.ok("cache", "warm", str(known), "--model", "fast", timeout=150)
    assert "warmed 5 jobs: 5 computed, 0 already cached, 0 failed" in first
    assert f"not cacheable: {known}:6: a sampled job without a seed" in first
    again = user.ok("cache", "warm", str(known), "--model", "fast", timeout=150)
    assert "warmed 5 jobs: 0 computed, 5 already cached, 0 failed" in again

    ids = user.ok(
        "submit", "llm", "--model", "fast", "--prompt", "known question 0", "--max-new-tokens", "8"
    ).split()
    assert user.run("wait", *ids, "--timeout", "60", timeout=90).returncode == 0
    result = user.ok("results", "get", ids[0], "-o", str(tmp_path / "out"))
    assert result is not None
    body = json.loads((tmp_path / "out" / ids[0] / "result.json").read_text())
    assert body["cached"] is True and body["text"].endswith("known question 0")

    stats = json.loads(user.ok("cache", "stats", "--json"))
    assert stats["stored"] == 5 and stats["redis"]["entries"] == 5
    assert sum(stats["hits"].values()) == 6 and stats["misses"] >= 5

    assert "cleared 5 entries" in user.ok("cache", "clear", "--model", "fast")
    third = user.ok("cache", "warm", str(known), "--model", "fast", timeout=150)
    assert "warmed 5 jobs: 5 computed, 0 already cached" in third
    bad = user.run("cache", "warm", str(tmp_path / "missing.jsonl"))
    assert bad.returncode == 2 and "cannot read jobs file" in bad.stderr

    # -- the same fleet rolls a new version of its model out, and back ---------------------
    def ask(prompt: str) -> tuple[str, dict[str, Any]]:
        ids = user.ok("submit", "llm", "--model", "fast", "--prompt", prompt).split()
        assert user.run("wait", *ids, "--timeout", "60", timeout=90).returncode == 0
        return ids[0], json.loads(user.ok("status", ids[0], "--json"))[ids[0]]

    added = user.ok("models", "add-version", "fast", "--set", "max_batch_size=4", "--note", "v2")
    assert "fast: added version 2" in added and "stable=1" in added
    assert ask("before the promote")[1]["version"] == "fast@1"
    assert "stable=2" in user.ok("models", "promote", "fast", "2")
    deadline = time.monotonic() + 10
    while ask(f"after the promote {time.monotonic()}")[1]["version"] != "fast@2":
        assert time.monotonic() < deadline, "the promote did not reach the consumer"
    assert "stable=1" in user.ok("models", "rollback", "fast")
    assert "shadow version 2" in user.ok("models", "shadow", "fast", "2", "--sample", "1")
    time.sleep(1.5)  # the consumer rereads the registry once a second
    shadowed = [ask(f"shadowed {i}")[0] for i in range(3)]
    deadline = time.monotonic() + 20
    while (cmp := json.loads(user.ok("models", "compare", "fast", "--json")))["pairs"] < 3:
        assert time.monotonic() < deadline, cmp
        time.sleep(0.5)
    assert cmp["agreement"] == 1.0 and cmp["shadow_versions"] == {"fast@2": 3}
    assert all(not (tmp_path / "out" / j).exists() for j in shadowed)
    history = json.loads(user.ok("models", "versions", "fast", "--json"))
    actions = [e["action"] for e in history["audit"]]
    assert actions[:4] == ["shadow", "rollback", "promote", "add-version"]
    assert history["record"]["aliases"] == {"stable": 1}
    audit = KafkaConsumer(
        "e2e.audit",
        bootstrap_servers=f"127.0.0.1:{user.ports['kafka_port']}",  # type: ignore[attr-defined]
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
    )
    published = [json.loads(m.value) for m in audit if m.key == b"models"]
    audit.close()
    assert [e["action"] for e in published] == ["add-version", "promote", "rollback", "shadow"]
    assert published[1]["aliases"] == {"stable": 2} and published[1]["actor"].startswith("cli:")
    wrong = user.run("models", "promote", "fast", "9")
    assert wrong.returncode == 2 and "has no version 9" in wrong.stderr
    wrong = user.run("models", "split", "fast")
    assert wrong.returncode == 2 and "give a VERSION" in wrong.stderr


def test_the_demo_runs_on_a_fresh_state_folder_and_answers_france(user: User) -> None:
    # a fresh clone: no secrets yet, so the stack generates them while the demo starts it
    assert not (Path(user.env["BLAZE_STACK__STATE_DIR"]) / "secrets.json").exists()
    said = user.ok("demo", "--jobs", "2", "--max-new-tokens", "12", timeout=600)
    assert "2/2 jobs succeeded" in said, said
    answers = [line for line in said.splitlines() if line.strip().startswith("A:")]
    assert len(answers) == 2 and "Paris" in answers[0], said
