"""Operator accounts and their commands from operator_topic, through the brain (fakes
for the wire): only a command signed with an account's key counts, only while fresh,
only what the console allows from elsewhere; each is audited and answered."""

from __future__ import annotations

import dataclasses
import re
import time

import pytest

from evc.central.events import OperatorLine
from evc.central.model import Settings
from evc.protocol import auth
from evc.protocol import messages as m
from evc.store import OPERATORS, Store
from tests.fakes import FakeLink, FakeOutbox, OneEventBatches, RecordingView
from tests.unit.test_brain_trust import Audit, Keys


@pytest.fixture
def central(tmp_path):
    audit, outbox, view = Audit(), FakeOutbox(), RecordingView()
    brain = OneEventBatches(Store(tmp_path / "c.json"), outbox, FakeLink(), view,
                            Settings(secure=True), credentials=Keys(), audit=audit)
    brain.upsert_cp("CP-01", "Calle 1", 0.3)
    brain.apply(OperatorLine("add-operator ana"))
    (text,) = [t for _, t in view.notes if t.startswith("operator ana: password")]
    password = re.search(r"password (\S+)", text).group(1)
    return brain, audit, outbox, view, password


def command(line: str, key: str, **extra) -> m.OperatorCommand:
    return auth.sign(m.OperatorCommand(operator="ana", command=line, source="127.0.0.1",
                                       **extra), key)


def answer_to(outbox, cmd) -> m.OperatorAnswer:
    (answer,) = [a for a in outbox.of(m.OperatorAnswer) if a.request_id == cmd.msg_id]
    return answer


def test_an_account_stores_a_slow_hash_and_its_commands_act_as_the_console(central):
    brain, audit, outbox, _, password = central
    key = auth.operator_key("ana", password)
    assert brain.store.get(OPERATORS, "ana")["key"] == key
    assert password not in str(brain.store.get(OPERATORS, "ana"))
    cmd = command("stop CP-01", key)
    brain.on_bus(cmd)
    assert brain.cps["CP-01"].stopped
    answer = answer_to(outbox, cmd)
    assert answer.ok and auth.verify(answer, key) and "CP-01" in answer.text
    (line,) = [f for f in audit.of("operator") if f["line"] == "stop CP-01"]
    assert line["by"] == "ana@127.0.0.1"
    brain.on_bus(cmd)  # the same record again: applied and answered once
    assert len([a for a in outbox.of(m.OperatorAnswer) if a.request_id == cmd.msg_id]) == 1
    who = command("whoami", key)
    brain.on_bus(who)
    assert answer_to(outbox, who).text == "operator ana"


def test_a_wrong_password_or_an_unknown_operator_changes_nothing_and_is_audited(central):
    brain, audit, outbox, view, password = central
    for cmd in (command("stop CP-01", auth.operator_key("ana", "guess")),
                dataclasses.replace(command("stop CP-01", auth.operator_key("bob", "x")),
                                    operator="bob"),
                m.OperatorCommand(operator="ana", command="stop CP-01")):  # unsigned
        brain.on_bus(cmd)
        answer = answer_to(outbox, cmd)
        assert not answer.ok and answer.code in ("bad_proof", "unknown_operator")
        assert not answer.mac  # no key of theirs to sign with
    assert not brain.cps["CP-01"].stopped
    assert len(audit.of("rejected")) == 3
    assert any("bad password" in t for level, t in view.notes if level == "error")


def test_old_console_only_or_bad_commands_are_refused_with_a_reason(central):
    brain, _, outbox, _, password = central
    key = auth.operator_key("ana", password)
    for line, code in (("quit", "not_allowed"), ("add-operator eve", "not_allowed"),
                       ("remove-operator ana", "not_allowed"), ("fly CP-01", "bad_command"),
                       ("stop CP-99", "failed")):
        cmd = command(line, key)
        brain.on_bus(cmd)
        answer = answer_to(outbox, cmd)
        assert (answer.ok, answer.code) == (False, code), (line, answer)
        assert auth.verify(answer, key)
    old = command("stop CP-01", key, ts=time.time() - 60)
    brain.on_bus(old)
    assert answer_to(outbox, old).code == "expired" and not brain.cps["CP-01"].stopped
    assert not brain.quit_requested.is_set()
    brain.apply(OperatorLine("remove-operator ana"))
    late = command("stop CP-01", key)
    brain.on_bus(late)
    assert answer_to(outbox, late).code == "unknown_operator"
