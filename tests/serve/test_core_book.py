"""Which core each CPU vLLM server is bound to: one server per core, never a shared core."""

from __future__ import annotations

from dataclasses import dataclass

from lifecycle.serve.run import CoreBook


@dataclass
class Running:
    alive: bool = True

    def running(self) -> bool:
        return self.alive


def test_each_server_gets_a_core_of_its_own_and_none_when_all_are_held() -> None:
    book = CoreBook([0, 1])
    first, second = book.take(), book.take()
    assert (first, second) == (0, 1)
    assert book.take() is None  # both starting: a third server runs unbound, never on a shared core
    a, b = Running(), Running()
    book.held_by(first, a)  # type: ignore[arg-type]
    book.held_by(second, b)  # type: ignore[arg-type]
    assert book.take() is None
    b.alive = False  # its server stopped: the core is free again
    assert book.take() == 1
    book.give_back(1)  # a start that failed gives its core back
    assert book.take() == 1
    book.held_by(None, Running())  # type: ignore[arg-type]  # an unbound server holds nothing
    assert book.take() is None
