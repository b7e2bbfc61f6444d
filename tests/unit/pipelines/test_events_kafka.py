"""Status events are best effort: a broker that does not confirm them never fails the caller."""

from kafka.errors import KafkaTimeoutError

from pipelines.settings import BlazeSettings
from pipelines.stores.events_kafka import KafkaStatusEvents


class _Unconfirmed:
    """A producer whose broker went away (a restart): flush times out."""

    def flush(self, timeout: float = 0) -> None:
        raise KafkaTimeoutError("Timeout waiting for future")


def test_a_flush_the_broker_does_not_confirm_is_logged_not_raised() -> None:
    events = KafkaStatusEvents(BlazeSettings(namespace="unit"))
    events._producer = _Unconfirmed()  # type: ignore[assignment]
    events.flush(timeout=0.1)  # a submit waiting for its "queued" events goes on
    assert events.failed == 1
