"""Everything `evc web` knows, owned by one thread (web/command.py's ``own``): the board's
model, who is logged in, and the operators' commands waiting for central's answer."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from evc.errors import BusError
from evc.protocol import auth
from evc.protocol.messages import Message, OperatorAnswer, OperatorCommand
from evc.protocol.topics import OPERATOR
from evc.web.logins import Logins
from evc.web.model import WebModel

log = logging.getLogger(__name__)

ANSWER_SECONDS = 8.0  # central's answer to an operator's command, at most (then: away)

Send = Callable[[str, Message, str], None]


class WebState:
    def __init__(self, model: WebModel, send: Send) -> None:
        self.model = model
        self.logins = Logins()
        self.send = send
        self.ready = False  # the answers' consumer reads operator_topic: commands may go
        self.published = 0  # the version of the board the last delta brought pages to
        # request id -> (the operator's key, the asking thread's future, give-up time)
        self.pending: dict[str, tuple[str, Future[OperatorAnswer], float]] = {}

    def command(self, name: str, key: str, line: str, source: str,
                answer: Future[OperatorAnswer]) -> None:
        """Sign and send ``line`` as operator ``name``; ``answer`` gets central's answer."""
        if not self.ready:
            answer.set_exception(BusError("evc web is still connecting to Kafka",
                                          retriable=True))
            return
        cmd = auth.sign(OperatorCommand(operator=name, command=line, source=source), key)
        try:
            self.send(OPERATOR, cmd, name)
        except BusError as exc:
            answer.set_exception(exc)
            return
        self.pending[cmd.msg_id] = (key, answer, time.monotonic() + ANSWER_SECONDS + 1)

    def on_answer(self, msg: OperatorAnswer) -> None:
        entry = self.pending.pop(msg.request_id, None)
        if entry is None:
            return  # another evc web's, or one given up on
        key, answer, _ = entry
        if msg.mac and not auth.verify(msg, key) or msg.ok and not msg.mac:
            log.warning("an answer to %s that central did not sign: ignored", msg.operator)
            self.pending[msg.request_id] = entry  # the real one may still come
            return
        if not msg.ok and msg.code in ("bad_proof", "unknown_operator"):
            # that key no longer counts (a new password, or the account removed): the
            # sessions on it end; another's wrong guess ends nobody's
            self.logins.forget(msg.operator, key)
        if not answer.done():
            answer.set_result(msg)

    def board(self, operator: bool) -> tuple[int, bytes]:
        """The whole board now, as JSON, and the version the next delta applies to."""
        return self.published, self.model.board_json(operator)

    def expire(self, now: float) -> None:
        for request_id in [r for r, (_, _, until) in self.pending.items() if until < now]:
            del self.pending[request_id]

    def apply(self, item: tuple[Any, ...]) -> None:
        kind = item[0]
        if kind == "net":
            self.model.on_network(item[1], item[2])
        elif kind == "log":
            self.model.on_changelog(item[1], item[2])
        elif kind == "answer":
            self.on_answer(item[1])
        elif kind == "kafka":
            self.model.on_kafka(item[1], time.time())
        elif kind == "ready":
            self.ready = True
        elif kind == "ask":
            question, answer = item[1], item[2]
            try:
                answer.set_result(question(self))
            except Exception as exc:  # noqa: BLE001 - the asking thread reports it
                answer.set_exception(exc)
