"""Dead letters on the ``{namespace}.dead-letter`` topic, keyed by job id when known."""

from __future__ import annotations

from collections.abc import Sequence

from kafka import KafkaProducer
from kafka.errors import KafkaError

from pipelines.kafka import make_producer, read_from_start, unavailable
from pipelines.settings import BlazeSettings
from pipelines.stores.deadletters import DeadLetter, Letter, in_order, letter_body


class KafkaDeadLetters:
    """Writes with ``acks=all`` and waits for every record; reads the topic without a group."""

    def __init__(self, settings: BlazeSettings, producer: KafkaProducer | None = None) -> None:
        self.settings = settings
        self.topic = settings.dead_letter_topic
        self._producer = producer

    @property
    def producer(self) -> KafkaProducer:
        if self._producer is None:
            self._producer = make_producer(self.settings)
        return self._producer

    def send(self, letters: Sequence[DeadLetter]) -> None:
        try:
            futures = [
                self.producer.send(
                    self.topic, key=(d.job_id or "").encode() or None, value=d.to_json()
                )
                for d in letters
            ]
            self.producer.flush(timeout=60)
            for fut in futures:
                fut.get(timeout=60)
        except KafkaError as exc:
            raise unavailable(self.settings, exc) from None

    def read(self, idle_s: float = 2.0, limit: int | None = None) -> list[Letter]:
        out: list[Letter] = []
        for rec in read_from_start(self.settings, self.topic, idle_s=idle_s, name="dlq-reader"):
            out.append(Letter(rec.partition, rec.offset, letter_body(rec.value)))
            if limit is not None and len(out) >= limit:
                break
        return in_order(out, limit)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=10)
            self._producer = None
