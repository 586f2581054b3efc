"""Operator accounts, and the console commands they send from elsewhere (evc web).

An operator is an account central makes at its console (``add-operator ana``): a
generated password, shown once, and what central stores of it, the operator's key
(``auth.operator_key``: scrypt of the password, slow on purpose). A command arrives on
operator_topic signed with that key; the active central checks the signature and the
age, applies it as if typed at its console (the same rules, the same words), audits it
with the operator's name and source, and answers on operator_topic, signed with the
same key. Only the active central reads operator_topic: a standby applies nothing.
Accounts are stored records, so a standby that takes over knows them.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from evc.central import admin, operator
from evc.protocol import auth
from evc.protocol.ids import MAX_TEXT
from evc.protocol.messages import OperatorAnswer, OperatorCommand
from evc.protocol.topics import OPERATOR
from evc.store import OPERATORS

if TYPE_CHECKING:
    from evc.central.brain import Brain

log = logging.getLogger(__name__)

COMMAND_TTL = 15.0  # s: an older command is refused (its client stopped waiting long ago)
WHOAMI = "whoami"  # what a client sends to check a password or a token
# console-only: the account commands, and the console's own
NOT_REMOTE = (admin.AddOperator, admin.RemoveOperator, admin.Quit, admin.OcppPassword)


class _Tee:
    """The brain's view, with every note also kept: the words the operator gets back."""

    def __init__(self, view: Any) -> None:
        self._view = view
        self.notes: list[tuple[str, str]] = []

    def note(self, text: str, level: str = "info") -> None:
        self.notes.append((text, level))
        self._view.note(text, level)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._view, name)


def on_command(brain: Brain, cmd: OperatorCommand) -> None:
    """A command from operator_topic: proven, fresh, allowed, then applied and answered."""
    if cmd.msg_id in brain.answered:
        return  # answered already (a redelivery)
    brain.answered[cmd.msg_id] = None
    rec = brain.store.get(OPERATORS, cmd.operator)
    key = str(rec["key"]) if rec else ""
    if not key or not auth.verify(cmd, key):
        code = "unknown_operator" if not key else "bad_proof"
        brain.audit.write("rejected", kind="operator_command", operator=cmd.operator,
                          source=cmd.source, code=code)
        brain.view.note(f"refused a command from {cmd.source or 'somewhere'} as operator "
                        f"{cmd.operator}: {'no such operator' if not key else 'bad password'}",
                        "error")
        _answer(brain, cmd, "", False, "unknown operator or wrong password", code)
        return
    age = brain.age(cmd.ts)
    if age > COMMAND_TTL:
        _answer(brain, cmd, key, False, f"command expired ({age:.0f} s old)", "expired")
        return
    if cmd.command.strip() == WHOAMI:
        _answer(brain, cmd, key, True, f"operator {cmd.operator}")
        return
    try:
        command = admin.parse_command(cmd.command)
    except admin.CommandError as exc:
        _answer(brain, cmd, key, False, str(exc), "bad_command")
        return
    if command is None or isinstance(command, NOT_REMOTE):
        _answer(brain, cmd, key, False, "only central's console may do that", "not_allowed")
        return
    tee = _Tee(brain.view)
    brain.view = tee  # a View with its notes kept
    try:
        operator.apply(brain, cmd.command, by=f"{cmd.operator}@{cmd.source or '?'}")
    finally:
        brain.view = tee._view
    failed = any(level == "error" for _, level in tee.notes)
    text = "; ".join(text for text, _ in tee.notes) or f"{cmd.command}: done"
    _answer(brain, cmd, key, not failed, text, "failed" if failed else "")


def _answer(brain: Brain, cmd: OperatorCommand, key: str, ok: bool, text: str,
            code: str = "") -> None:
    text = " ".join(text.split())  # one line
    if len(text) > MAX_TEXT:
        text = text[:MAX_TEXT - 1] + "…"
    answer = OperatorAnswer(operator=cmd.operator, request_id=cmd.msg_id, ok=ok, text=text,
                            code=code)
    brain.emit(OPERATOR, auth.sign(answer, key) if key else answer, cmd.operator)
