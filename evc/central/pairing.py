"""Pairing at central: the codes the operator hands out, and the exchanges that use them.

``pair CP-07`` (operator.py) makes a code; a monitor uses it over the TCP link (``pair``,
``pair_prove``), a driver over Kafka (``pair_request``, ``pair_prove_driver``). Each try
is counted when central answers its first message; a code lives 10 minutes, is used once
and dies after 5 tries. Every try, paired or refused, is audited (with the source address
where there is one: Kafka gives none). protocol/pairing.py holds the cryptography.

Codes and exchanges in progress live in this central's memory only: a code outlives
neither a restart nor a failover (the operator makes another one).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from evc.errors import ProtocolError
from evc.protocol import auth, pairing
from evc.protocol.messages import (
    DriverPair,
    DriverPairChallenge,
    DriverPairProve,
    DriverPairResult,
    PairAccepted,
    PairChallenge,
    PairProve,
    PairRejected,
    PairStart,
    RegisterRejected,
    RejectCode,
)
from evc.protocol.topics import CONTROL
from evc.store import DRIVERS

if TYPE_CHECKING:
    from evc.central.brain import Brain

CODE_LIFETIME = 600.0
MAX_TRIES = 5
EXCHANGE_LIFETIME = 60.0  # between central's element and the client's confirmation


class Refused(Exception):
    """A pairing try that cannot go on; the message is what the client is told."""


@dataclass
class Code:
    ident: str
    code: str  # normalized
    expires: float  # monotonic
    tries: int = 0


@dataclass
class Exchange:
    ident: str
    key: bytes
    source: str
    expires: float


@dataclass
class Pairings:
    """The live codes (by CP or driver id) and the exchanges under way (by connection or
    by the pairing request's id)."""

    codes: dict[str, Code] = field(default_factory=dict)
    exchanges: dict[object, Exchange] = field(default_factory=dict)

    def issue(self, ident: str, now: float | None = None) -> str:
        """A fresh code for ``ident`` (any earlier one for it dies)."""
        shown = pairing.new_code()
        self.codes[ident] = Code(ident, pairing.normalize(shown),
                                 (time.monotonic() if now is None else now) + CODE_LIFETIME)
        self.exchanges = {k: x for k, x in self.exchanges.items() if x.ident != ident}
        return shown

    def begin(self, token: object, ident: str, element: str, source: str,
              now: float | None = None) -> str:
        """The client's first element -> central's (hex); the try counts from here."""
        now = time.monotonic() if now is None else now
        code = self.codes.get(ident)
        if code is None:
            raise Refused(f"no pairing code for {ident} at central (never made, already "
                          f"used or replaced): type `pair {ident}` at central's console")
        if now > code.expires:
            del self.codes[ident]
            raise Refused(f"the pairing code for {ident} expired; make a new one with "
                          f"`pair {ident}`")
        code.tries += 1
        if code.tries >= MAX_TRIES:
            del self.codes[ident]  # this try is the last one it gets
        side = pairing.PakeSide(code.code, ident, central=True)
        try:
            key = side.finish(element)
        except ProtocolError as exc:
            raise Refused(f"pairing of {ident} refused: {exc}") from None
        self.exchanges[token] = Exchange(ident, key, source, now + EXCHANGE_LIFETIME)
        return side.outbound

    def finish(self, token: object, ident: str, confirm: str,
               now: float | None = None) -> tuple[str, str]:
        """The client's confirmation -> (the credential, central's confirmation); the code
        is used up. A wrong one is Refused (it was counted when the exchange began)."""
        now = time.monotonic() if now is None else now
        exchange = self.exchanges.pop(token, None)
        if exchange is None or exchange.ident != ident or now > exchange.expires:
            raise Refused(f"no pairing of {ident} in progress here (start again)")
        if not auth.same(pairing.client_confirm(exchange.key, ident), confirm):
            code = self.codes.get(ident)
            left = MAX_TRIES - code.tries if code is not None else 0
            raise Refused(f"wrong pairing code for {ident}"
                          + (f" ({left} tries left)" if left else "; the code is used up, "
                             f"make a new one with `pair {ident}`"))
        self.codes.pop(ident, None)
        return (pairing.credential(exchange.key, ident),
                pairing.central_confirm(exchange.key, ident))

    def drop(self, token: object) -> None:
        self.exchanges.pop(token, None)

    def expire(self, now: float) -> None:
        self.codes = {k: c for k, c in self.codes.items() if now <= c.expires}
        self.exchanges = {k: x for k, x in self.exchanges.items() if now <= x.expires}


# ---------------------------------------------------------------------- the operator


def pair_command(brain: Brain, ident: str, replace: bool) -> None:
    """``pair <id> [replace]``: a code for a CP of the registry, or else for a driver. A
    credential that was proven already is replaced only when the operator says so."""
    note = brain.view.note
    cp = brain.cps.get(ident)
    used = (cp.proven and bool(cp.secret)) if cp is not None else (
        bool(brain.drivers.get(ident)) and ident in brain.proven_drivers)
    if used and not replace:
        note(f"{ident} already holds a credential that was proven: pairing replaces it "
             f"(and disconnects its monitor). Type `pair {ident} replace` to go on.", "warning")
        return
    code = brain.pairings.issue(ident)
    kind = "CP" if cp is not None else "driver"
    how = (f"evc cp-monitor <engine> <central> {ident} --pair {code}" if cp is not None
           else f"evc driver <kafka> {ident} --pair {code}")
    note(f"pairing code for {kind} {ident}: {code} (valid 10 minutes, once): {how}")
    brain.audit.write("pairing", id=ident, action="code issued")


# ---------------------------------------------------------------------- TCP: a CP


def on_pair_start(brain: Brain, conn_id: int, peer: str, msg: PairStart) -> None:
    if msg.cp_id not in brain.cps:
        _refuse_cp(brain, conn_id, peer, msg.cp_id,
                   f"{msg.cp_id} is not in central's registry (add it first)")
        return
    try:
        element = brain.pairings.begin(conn_id, msg.cp_id, msg.pake, peer)
    except Refused as exc:
        _refuse_cp(brain, conn_id, peer, msg.cp_id, str(exc))
        return
    brain.link.send(conn_id, PairChallenge(cp_id=msg.cp_id, pake=element))


def on_pair_prove(brain: Brain, conn_id: int, peer: str, msg: PairProve) -> None:
    try:
        secret, confirm = brain.pairings.finish(conn_id, msg.cp_id, msg.confirm)
    except Refused as exc:
        _refuse_cp(brain, conn_id, peer, msg.cp_id, str(exc))
        return
    cp = brain.cps.get(msg.cp_id)
    if cp is None:  # removed meanwhile
        _refuse_cp(brain, conn_id, peer, msg.cp_id, f"{msg.cp_id} left the registry")
        return
    old_conn = cp.conn_id
    cp.secret, cp.keys, cp.proven = secret, {}, False
    brain.save_cp(cp)
    where = brain.credentials.write(cp.cp_id, secret)
    brain.audit.write("pairing", id=cp.cp_id, source=peer, result="paired",
                      file=str(where or ""))
    brain.link.send(conn_id, PairAccepted(cp_id=cp.cp_id, confirm=confirm))
    brain.view.note(f"paired {cp.cp_id} from {peer}: it holds its credential now")
    if old_conn is not None:  # the monitor of the old credential cannot go on
        brain.link.close_connection(old_conn, "credential replaced by pairing",
                                    RegisterRejected(cp_id=cp.cp_id, code=RejectCode.AUTH,
                                                     reason=f"{cp.cp_id} was paired again"))


def _refuse_cp(brain: Brain, conn_id: int, peer: str, cp_id: str, why: str) -> None:
    brain.pairings.drop(conn_id)
    brain.view.note(f"refused pairing of {cp_id} from {peer}: {why}", "warning")
    brain.audit.write("pairing", id=cp_id, source=peer, result="refused", why=why)
    brain.link.close_connection(conn_id, f"pairing refused: {why}",
                                PairRejected(cp_id=cp_id, reason=why))


# ---------------------------------------------------------------------- Kafka: a driver


def on_driver_pair(brain: Brain, msg: DriverPair) -> None:
    if msg.driver_id in brain.cps:
        _refuse_driver(brain, msg.driver_id, msg.msg_id, f"{msg.driver_id} is a charge point")
        return
    try:
        element = brain.pairings.begin(msg.msg_id, msg.driver_id, msg.pake, "kafka")
    except Refused as exc:
        _refuse_driver(brain, msg.driver_id, msg.msg_id, str(exc))
        return
    brain.emit(CONTROL, DriverPairChallenge(driver_id=msg.driver_id, request_id=msg.msg_id,
                                             pake=element), msg.driver_id)


def on_driver_prove(brain: Brain, msg: DriverPairProve) -> None:
    try:
        secret, confirm = brain.pairings.finish(msg.request_id, msg.driver_id, msg.confirm)
    except Refused as exc:
        _refuse_driver(brain, msg.driver_id, msg.request_id, str(exc))
        return
    brain.drivers[msg.driver_id] = secret
    brain.proven_drivers.discard(msg.driver_id)
    brain.store.put(DRIVERS, {"driver_id": msg.driver_id, "secret": secret, "proven": False})
    where = brain.credentials.write(msg.driver_id, secret)
    brain.audit.write("pairing", id=msg.driver_id, source="kafka", result="paired",
                      file=str(where or ""))
    brain.emit(CONTROL, DriverPairResult(driver_id=msg.driver_id, request_id=msg.request_id,
                                          ok=True, confirm=confirm), msg.driver_id)
    brain.view.note(f"paired driver {msg.driver_id}: it holds its credential now")


def _refuse_driver(brain: Brain, driver_id: str, request_id: str, why: str) -> None:
    brain.pairings.drop(request_id)
    brain.view.note(f"refused pairing of driver {driver_id}: {why}", "warning")
    brain.audit.write("pairing", id=driver_id, source="kafka", result="refused", why=why)
    brain.emit(CONTROL, DriverPairResult(driver_id=driver_id, request_id=request_id, ok=False,
                                          reason=why), driver_id)
