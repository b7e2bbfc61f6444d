"""The retention sweep, over the in-memory result store."""

from pipelines.retention import sweep
from pipelines.settings import BlazeSettings
from pipelines.stores.results_memory import MemoryResultStore

SETTINGS = BlazeSettings(namespace="unit")


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
