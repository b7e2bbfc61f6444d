"""The ``ResultStore`` contract, on memory and on S3 (SeaweedFS)."""

from __future__ import annotations

import io

from pipelines.stores.results import ResultStore

Store = tuple[ResultStore, str]


def test_objects_round_trip_by_key(result_store: Store) -> None:
    store, ns = result_store
    items = [
        (f"{ns}jobs/j{i}/result.json", f'{{"i": {i}}}'.encode(), "application/json")
        for i in range(40)
    ]
    assert store.put_many(items) == set()
    keys = [k for k, _, _ in items]
    assert store.get(keys[7]) == b'{"i": 7}'
    assert store.get(f"{ns}missing") is None
    assert store.existing([*keys, f"{ns}jobs/nope/result.json"]) == set(keys)
    assert store.get_many([keys[0], f"{ns}missing"]) == {keys[0]: b'{"i": 0}', f"{ns}missing": None}
    assert store.list_keys(f"{ns}jobs/") == sorted(keys)
    scanned = store.scan(f"{ns}jobs/j1")
    assert [o.key for o in scanned] == sorted(k for k in keys if k.startswith(f"{ns}jobs/j1"))
    assert all(o.size == len(b'{"i": 1}') or o.size == len(b'{"i": 10}') for o in scanned)


def test_first_writer_wins_and_reports_the_taken_keys(result_store: Store) -> None:
    store, ns = result_store
    big = bytes(range(256)) * (6 << 12)  # 6 MiB: above S3's 5 MiB threshold, sent in parts
    first = [(f"{ns}a.json", b"1", "application/json"), (f"{ns}big.bin", big, "x/bin")]
    assert store.put_many(first, if_absent=True) == set()
    again = [
        (f"{ns}a.json", b"2", "application/json"),
        (f"{ns}big.bin", b"small", "x/bin"),
        (f"{ns}new.json", b"3", "application/json"),
    ]
    assert store.put_many(again, if_absent=True) == {f"{ns}a.json", f"{ns}big.bin"}
    assert store.get(f"{ns}a.json") == b"1" and store.get(f"{ns}big.bin") == big
    assert store.get(f"{ns}new.json") == b"3"
    # without if_absent a write replaces
    assert store.put_many([(f"{ns}a.json", b"4", "application/json")]) == set()
    assert store.get(f"{ns}a.json") == b"4"


def test_streams_and_deletes(result_store: Store) -> None:
    store, ns = result_store
    data = bytes(range(256)) * 40_000  # ~10 MiB of unknown length
    store.put_stream(f"{ns}stream.bin", io.BytesIO(data), "x/bin")
    assert store.get(f"{ns}stream.bin") == data
    assert store.delete_many([f"{ns}stream.bin", f"{ns}missing"]) == 2
    assert store.get(f"{ns}stream.bin") is None and store.list_keys(ns) == []


def test_presigned_links_name_the_key(result_store: Store) -> None:
    store, ns = result_store
    store.put_many([(f"{ns}x.json", b"{}", "application/json")])
    url = store.presign(f"{ns}x.json", 60)
    assert f"{ns}x.json" in url
