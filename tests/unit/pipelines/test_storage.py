"""The in-memory result store's contract and the retention sweep over it."""

from pipelines.retention import sweep
from pipelines.settings import BlazeSettings
from pipelines.storage import MemoryResultStore

SETTINGS = BlazeSettings(namespace="unit")


def test_if_absent_keeps_the_first_object_and_reports_the_taken_keys() -> None:
    store = MemoryResultStore()
    assert store.put_many([("k", b"1", "x"), ("j", b"2", "x")], if_absent=True) == set()
    assert store.put_many([("k", b"3", "x"), ("n", b"4", "x")], if_absent=True) == {"k"}
    assert store.get("k") == b"1" and store.get("n") == b"4"
    assert store.put_many([("k", b"5", "x")]) == set() and store.get("k") == b"5"


def test_sweep_deletes_whole_prefixes_whose_newest_object_is_old() -> None:
    now = [1000.0]
    store = MemoryResultStore(clock=lambda: now[0])
    store.put_many(
        [("unit/jobs/a/image-0.png", b"i", "x"), ("unit/jobs/a/result.json", b"{}", "x")]
    )
    store.put_many([("unit/jobs/b/image-0.png", b"i", "x")])
    now[0] = 5000.0
    store.put_many(
        [("unit/jobs/b/result.json", b"{}", "x"), ("other/jobs/c/result.json", b"", "x")]
    )
    report = sweep(SETTINGS, store, older_than_s=3000, now=6000.0)
    assert report.prefixes == {"jobs": 1} and report.objects == 2
    assert store.list_keys("") == [
        "other/jobs/c/result.json",
        "unit/jobs/b/image-0.png",
        "unit/jobs/b/result.json",
    ]
