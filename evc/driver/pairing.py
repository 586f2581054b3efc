"""``evc driver … --pair CODE``: the operator's one-time code turned into this driver's
credential over Kafka (protocol/pairing.py holds the exchange, central/pairing.py
central's side): a ``pair_request`` and a ``pair_prove_driver`` on requests_topic,
central's ``pair_challenge_driver`` and ``pair_result`` on the driver's own partition of
control_topic."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from evc.errors import ProtocolError
from evc.protocol import auth, pairing
from evc.protocol.messages import (
    DriverPair,
    DriverPairChallenge,
    DriverPairProve,
    DriverPairResult,
)

if TYPE_CHECKING:
    from evc.driver.driver import Driver


def pair(driver: Driver, code: str, say: Callable[[str], None]) -> bool:
    """True when the credential is stored here (or was already, if central refuses)."""
    who = driver.driver_id
    try:
        side = pairing.PakeSide(code, who, central=False)
    except ProtocolError as exc:
        say(f"{who}: --pair: {exc}")
        return False
    request = DriverPair(driver_id=who, pake=side.outbound)
    driver.submit(request, who)
    say(f"{who}: pairing with central…")
    answer = _await(driver, request.msg_id)
    if isinstance(answer, DriverPairChallenge):
        try:
            key = side.finish(answer.pake)
        except ProtocolError as exc:
            say(f"{who}: central's pairing answer is not valid ({exc})")
            return False
        driver.submit(DriverPairProve(driver_id=who, request_id=request.msg_id,
                                      confirm=pairing.client_confirm(key, who)), who)
        answer = _await(driver, request.msg_id)
        if isinstance(answer, DriverPairResult) and answer.ok:
            if not auth.same(pairing.central_confirm(key, who), answer.confirm):
                say(f"{who}: central did not prove it knows the pairing code (not the real "
                    "central?); nothing was stored")
                return False
            return driver.store_credential(pairing.credential(key, who))
    if answer is None:
        say(f"{who}: central did not answer the pairing within {driver.timeout:g} s")
        return False
    assert isinstance(answer, DriverPairResult)
    if driver.key is not None:
        say(f"{who}: central refused the pairing ({answer.reason}); going on with the "
            "credential already here")
        return True
    say(f"{who}: central refused the pairing: {answer.reason}")
    return False


def _await(driver: Driver, request_id: str) -> DriverPairChallenge | DriverPairResult | None:
    """Central's next word on this pairing, counted only while central is there."""
    for left in driver.countdown(driver.timeout):
        if left <= 0:
            return None
        msg = driver.next_message(left)
        if isinstance(msg, (DriverPairChallenge, DriverPairResult)) and \
                msg.request_id == request_id:
            return msg
    return None
