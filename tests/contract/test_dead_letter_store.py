"""The ``DeadLetterStore`` contract (write and read side), on memory and on Kafka."""

from __future__ import annotations

from pipelines.stores.deadletters import DeadLetter, DeadLetterStore, Source


def test_sent_letters_read_back_oldest_first_with_everything_they_said(
    dead_letters: DeadLetterStore,
) -> None:
    letters = [
        DeadLetter(
            "intake",
            f"invalid job: prompt: field required ({n})",
            job_id=f"j{n}" if n % 2 else None,
            source=Source("ns.jobs.llm", 1, 10 + n),
            errors=[{"loc": "prompt", "msg": "field required", "type": "missing"}],
            payload='{"model": "tiny"}',
            at=f"2026-11-30T00:00:0{n}+00:00",
        )
        for n in range(5)
    ]
    dead_letters.send(letters[2:])
    dead_letters.send(letters[:2])
    got = dead_letters.read(idle_s=2)
    assert [g.body["reason"] for g in got] == [d.reason for d in letters]
    assert len({g.ref for g in got}) == 5
    first = got[1].body
    assert first["job_id"] == "j1" and first["stage"] == "intake"
    assert first["source"] == {"topic": "ns.jobs.llm", "partition": 1, "offset": 11}
    assert first["errors"][0]["loc"] == "prompt" and first["payload"] == '{"model": "tiny"}'
    assert got[0].body["job_id"] is None
    some = dead_letters.read(idle_s=2, limit=2)
    assert len(some) == 2 and some == sorted(some, key=lambda g: g.body["at"])


def test_an_empty_store_reads_as_nothing(dead_letters: DeadLetterStore) -> None:
    assert dead_letters.read(idle_s=1) == []
