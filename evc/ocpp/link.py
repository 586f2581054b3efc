"""One OCPP charger's registration with central over central's TCP port, in asyncio.

It says what a ``cp-monitor`` says for an evc CP: ``register`` (``via: "ocpp"``), the
proof of the CP's credential when central challenges, a heartbeat while the charger is
connected, and the charger's faults, recoveries and statuses. It reconnects with backoff,
trying each central given in turn (a standby's refusal moves on at once), until it is
closed: when the charger's WebSocket ends, central sees the CP Desconectado.

It runs on the gateway's event loop, which owns its state; it tells the gateway what
happened through ``on_change`` (registered, lost, refused for good).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from enum import Enum

from evc.errors import ProtocolError
from evc.net import Address
from evc.protocol import auth
from evc.protocol.framing import FrameDecoder, encode_frame
from evc.protocol.messages import (
    Challenge,
    ErrorFrame,
    Health,
    Heartbeat,
    HeartbeatAck,
    Message,
    Prove,
    Register,
    RegisterAccepted,
    RegisterRejected,
    RejectCode,
    from_wire,
)

log = logging.getLogger(__name__)


class LinkState(Enum):
    CONNECTING = "connecting"  # not registered (yet, or again)
    REGISTERED = "registered"
    REFUSED = "refused"  # central refused this CP for good (unknown, wrong credential)
    CLOSED = "closed"


class CentralLink:
    def __init__(self, cp_id: str, centrals: list[Address], *, secret: str | None,
                 location: str = "", max_kw: float = 0.0, heartbeat: float = 1.0,
                 timeout: float = 5.0, slots: asyncio.Semaphore | None = None,
                 on_change: Callable[[CentralLink], None] = lambda _link: None) -> None:
        self.cp_id = cp_id
        self.centrals = centrals
        self.central = centrals[0]
        self.secret = secret
        self.location = location
        self.max_kw = max_kw
        self.heartbeat = heartbeat
        self.timeout = timeout
        self.on_change = on_change
        # registrations under way at once, over all chargers: a gateway whose thousand
        # chargers connect together registers them at central's pace (central refuses
        # more than a few dozen unregistered connections from one address)
        self.slots = slots
        self._slot = False
        self.state = LinkState.CONNECTING
        self.why = "not connected yet"  # the last refusal or loss, in words
        self.keys: dict[str, str] = {}  # kid -> this CP's Kafka key (newest last, 2 kept)
        self.proven = False
        self.healthy = True  # what the next Register says
        self._backoff = 0.5  # before the next round of centrals; reset by a registration
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._nonce = ""
        self._challenge = ""
        self._registered = asyncio.Event()
        self._said: list[Message] = []  # said while not registered: told once it is

    # ------------------------------------------------------------------ public
    @property
    def key(self) -> str | None:
        """The newest Kafka key (None: never registered proven)."""
        return list(self.keys.values())[-1] if self.keys else None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"link-{self.cp_id}")

    async def registered(self, within: float) -> bool:
        """Whether it is registered (waiting up to ``within`` s for it)."""
        if self.state is LinkState.REGISTERED:
            return True
        try:
            await asyncio.wait_for(self._registered.wait(), within)
        except TimeoutError:
            return False
        return self.is_registered()

    def is_registered(self) -> bool:
        return self.state is LinkState.REGISTERED

    def tell(self, msg: Message) -> None:
        """A word for central (fault, recovery, status, note): sent now, or once
        registered (the latest few kept)."""
        if self.state is LinkState.REGISTERED and self._writer is not None:
            self._write(msg)
        else:
            self._said = [*self._said[-7:], msg]

    async def close(self) -> None:
        self.state = LinkState.CLOSED
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._hang_up()

    # ------------------------------------------------------------------ the loop
    async def _run(self) -> None:
        tried = 0
        while self.state is not LinkState.CLOSED:
            try:
                await self._session()
            except (OSError, ProtocolError, TimeoutError) as exc:
                self._lost(getattr(exc, "strerror", None) or str(exc) or type(exc).__name__)
            finally:
                self._hang_up()
            if self.state in (LinkState.CLOSED, LinkState.REFUSED):
                return
            tried += 1
            self.central = self.centrals[tried % len(self.centrals)]
            if tried % len(self.centrals):
                continue  # the next central at once; the backoff after a whole round
            await asyncio.sleep(self._backoff)
            self._backoff = min(self._backoff * 2, 5.0)

    async def _session(self) -> None:
        if self.slots is not None:
            await self.slots.acquire()
            self._slot = True
        try:
            await self._talk()
        finally:
            self._free_slot()

    def _free_slot(self) -> None:
        if self._slot and self.slots is not None:
            self._slot = False
            self.slots.release()

    async def _talk(self) -> None:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(*self.central.pair), self.timeout)
        self._writer = writer
        self._nonce, self._challenge = auth.new_nonce(), ""
        self._write(Register(cp_id=self.cp_id, location=self.location, nonce=self._nonce,
                             health=Health.OK if self.healthy else Health.KO,
                             max_kw=self.max_kw, via="ocpp"))
        decoder = FrameDecoder()
        last_rx = time.monotonic()  # this connection's: a new one starts afresh
        next_beat = last_rx + self.heartbeat
        while True:
            wait = max(0.05, next_beat - time.monotonic())
            try:
                data = await asyncio.wait_for(reader.read(65536), min(wait, self.timeout))
            except TimeoutError:
                data = None
            now = time.monotonic()
            if data is not None:
                if not data:
                    decoder.close()
                    raise ConnectionError("central closed the connection")
                last_rx = now
                for obj in decoder.feed(data):
                    if self._on_frame(from_wire(obj)):
                        return
            if now - last_rx > self.timeout:
                raise TimeoutError(f"central silent for {self.timeout:g} s")
            if now >= next_beat:
                if self.state is LinkState.REGISTERED:
                    self._write(Heartbeat(cp_id=self.cp_id))
                next_beat = now + self.heartbeat

    def _on_frame(self, msg: Message) -> bool:
        """Central's word; True ends this connection."""
        match msg:
            case Challenge():
                if self.secret is None:
                    self._write(Prove(cp_id=self.cp_id))  # none here: central says if ok
                    return False
                self._challenge = msg.nonce
                self._write(Prove(cp_id=self.cp_id, proof=auth.register_proof(
                    self.secret, self.cp_id, self._nonce, msg.nonce)))
            case RegisterAccepted():
                return self._on_accepted(msg)
            case RegisterRejected():
                self.why = msg.reason
                if msg.code in (RejectCode.UNKNOWN, RejectCode.AUTH):
                    self.state = LinkState.REFUSED
                    self.on_change(self)
                else:
                    log.info("%s: central at %s refused (%s): %s", self.cp_id, self.central,
                             msg.code, msg.reason)
                return True
            case ErrorFrame():
                log.warning("%s: central reports a protocol error: %s", self.cp_id, msg.reason)
            case HeartbeatAck():
                pass
            case _:
                log.warning("%s: unexpected %s from central", self.cp_id, msg.TYPE)
        return False

    def _on_accepted(self, msg: RegisterAccepted) -> bool:
        if self.secret is not None:
            if not self._challenge:
                self.why = ("central accepted it without proving it holds its credential "
                            "(revoked there, or not the real central)")
                self.state = LinkState.REFUSED
                self.on_change(self)
                return True
            expected = auth.central_proof(self.secret, self.cp_id, self._nonce,
                                          self._challenge)
            key = auth.kafka_key(self.secret, self._nonce, self._challenge)
            if not auth.same(expected, msg.proof) or auth.key_id(key) != msg.key_id:
                self.why = "central could not prove it holds this CP's credential"
                return True
            self.keys = {**dict(list(self.keys.items())[-1:]), msg.key_id: key}
            self.proven = True
        self.state = LinkState.REGISTERED
        self._backoff = 0.5
        self._free_slot()
        self.why = ""
        self._registered.set()
        said, self._said = self._said, []
        for word in said:
            self._write(word)
        log.info("%s: registered with central at %s", self.cp_id, self.central)
        self.on_change(self)
        return False

    def _lost(self, reason: str) -> None:
        if self.state is LinkState.REGISTERED:
            self.state = LinkState.CONNECTING
            self._registered.clear()
            self.why = f"lost central: {reason}"
            log.info("%s: %s", self.cp_id, self.why)
            self.on_change(self)
        elif self.state is LinkState.CONNECTING:
            self.why = f"cannot reach central at {self.central} ({reason})"

    def _write(self, msg: Message) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(encode_frame(msg.to_wire()))

    def _hang_up(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        if self.state is LinkState.REGISTERED:
            self.state = LinkState.CONNECTING
            self._registered.clear()
            self.on_change(self)
