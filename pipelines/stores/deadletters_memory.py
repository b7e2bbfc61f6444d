"""The in-memory ``DeadLetterStore``: a list, for unit tests and docs; inspect ``letters``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from pipelines.stores.deadletters import DeadLetter, Letter, in_order, letter_body


@dataclass
class MemoryDeadLetters:
    """Letters in the order they were sent; read back as one partition."""

    letters: list[DeadLetter] = field(default_factory=list)

    def send(self, letters: Sequence[DeadLetter]) -> None:
        self.letters.extend(letters)

    def read(self, idle_s: float = 2.0, limit: int | None = None) -> list[Letter]:
        stored = [Letter(0, n, letter_body(d.to_json())) for n, d in enumerate(self.letters)]
        return in_order(stored[:limit], limit)

    def close(self) -> None:
        pass
