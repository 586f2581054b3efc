"""Between the model's owner thread and the HTTP threads: the board's changes it
publishes (read by any number of event streams) and the questions that HTTP threads ask
it, the whole board among them (answered on the owner's thread, so the model has one
owner).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from evc.web.state import WebState

T = TypeVar("T")


class Unavailable(Exception):
    """The owner thread did not answer in time (or the process is stopping)."""


@dataclass(frozen=True)
class Snapshot:
    """What changed between two published versions of the board: a page that has the
    board of version ``base`` applies the delta and has ``version``'s (a delta's rows are
    whole, so applying one to a board that already has some of them changes nothing)."""

    version: int
    base: int = -1
    public_delta: bytes = b"{}"  # for anyone
    operator_delta: bytes = b"{}"  # with driver ids, for operators


class Hub:
    def __init__(self, inbox: queue.Queue[Any]) -> None:
        self._inbox = inbox
        self._cond = threading.Condition()
        self._snap = Snapshot(0)
        self.closed = False

    # ------------------------------------------------------------------ the owner's side
    def publish(self, snap: Snapshot) -> None:
        with self._cond:
            self._snap = snap
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    # ------------------------------------------------------------------ HTTP threads
    def newer(self, version: int, timeout: float) -> Snapshot:
        """The first snapshot newer than ``version``, or the same one after ``timeout``."""
        with self._cond:
            self._cond.wait_for(lambda: self.closed or self._snap.version != version, timeout)
            return self._snap

    def ask(self, question: Callable[[WebState], T], timeout: float = 5.0) -> T:
        """``question(state)``, computed on the owner's thread."""
        if self.closed:
            raise Unavailable("stopping")
        answer: Future[T] = Future()
        self._inbox.put(("ask", question, answer))
        try:
            return answer.result(timeout)
        except FutureTimeout:
            raise Unavailable("the board's model did not answer in time") from None
