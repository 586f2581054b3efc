"""Proofs and MACs (protocol/auth.py): what a stranger cannot make."""

from __future__ import annotations

import dataclasses

import pytest

from evc.errors import ProtocolError
from evc.protocol import auth
from evc.protocol import messages as m


def test_proofs_need_the_secret_and_bind_every_field():
    secret, other = auth.new_secret(), auth.new_secret()
    proof = auth.register_proof(secret, "CP-01", "c1", "s1")
    assert auth.same(proof, auth.register_proof(secret, "CP-01", "c1", "s1"))
    for variant in (auth.register_proof(other, "CP-01", "c1", "s1"),
                    auth.register_proof(secret, "CP-02", "c1", "s1"),
                    auth.register_proof(secret, "CP-01", "c2", "s1"),
                    auth.register_proof(secret, "CP-01", "c1", "s2"),
                    auth.central_proof(secret, "CP-01", "c1", "s1")):
        assert not auth.same(proof, variant)
    assert auth.kafka_key(secret, "c1", "s1") != auth.kafka_key(secret, "c1", "s2")
    assert len(auth.key_id(auth.kafka_key(secret, "c1", "s1"))) == 16


def test_signed_messages_verify_only_unchanged_and_under_their_key():
    key = auth.new_secret()
    order = auth.sign(m.StartSupply(cp_id="CP-01", driver_id="D-1", session_id="s1",
                                    price_eur_kwh=0.3), key)
    assert order.kid == auth.key_id(key) and auth.verify(order, key)
    again = m.from_wire(order.to_wire())  # through the wire and back
    assert auth.verify(again, key)
    assert not auth.verify(order, auth.new_secret())
    assert not auth.verify(dataclasses.replace(order, price_eur_kwh=0.0), key)
    assert not auth.verify(dataclasses.replace(order, mac=""), key)
    unsigned = m.StartSupply(cp_id="CP-01", driver_id="D-1", session_id="s1", price_eur_kwh=1)
    assert "mac" not in unsigned.to_wire() and not auth.verify(unsigned, key)


@pytest.mark.parametrize("text", ["", "abc", "g" * 64, "a" * 63, "a" * 65])
def test_keys_are_64_hex_characters(text):
    with pytest.raises(ProtocolError):
        auth.check_key(text)


def test_a_key_file_may_end_with_a_newline():
    key = auth.new_secret()
    assert auth.check_key(key.upper() + "\n") == key
