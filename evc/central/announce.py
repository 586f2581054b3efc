"""Stored before announced, applied before acked: how the brain's decisions leave it.

The brain decides messages (``emit``) while it applies a batch of events; ``flush``
then commits the store once (the batch's state, the decided messages as its outbox,
how far each Kafka partition was applied), and only then sends them and acknowledges
the records the batch read. Each message leaves the stored outbox when Kafka confirms
it; one that fails is sent again (after a crash too: the outbox is reloaded), one Kafka
refuses for good is said and kept for the next start. The brain's own thread does all
of this; Kafka's verdicts come back to it as ``Sent`` records, gathered here until it
takes them (one ``Verdicts`` event for all that came meanwhile).
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from evc.central.events import Event, Sent, Verdicts
from evc.central.ports import Acker, Outbox, View
from evc.errors import BusError, ProtocolError
from evc.ports import Done, Unconfirmed, Verdict
from evc.protocol.messages import Message, from_wire
from evc.protocol.topics import Delivery
from evc.store import OUTBOX, Store

log = logging.getLogger(__name__)


class Announcer:
    def __init__(self, store: Store, outbox: Outbox, events: queue.Queue[Event],
                 view: View) -> None:
        self.store = store
        self.outbox = outbox
        self.events = events
        self.acker: Acker | None = None  # the consumer, told what was applied
        self.applied: dict[tuple[str, int], int] = store.offsets()  # next offset to apply
        # decided messages on their way to Kafka (each also in the stored outbox)
        self.unsent = Unconfirmed(outbox.send, self._report,
                                  say=lambda text: view.note(text, "error"))
        self.last_confirm = time.monotonic()  # Kafka last confirmed a send
        self._new: list[str] = []  # decided in this batch: sent after the commit
        self._seq = 0
        self._acks: list[Delivery] = []
        # Kafka's verdicts, from the producer's thread, until the brain takes them
        self._verdicts: list[Sent] = []
        self._verdicts_lock = threading.Lock()

    def restore(self) -> None:
        """Messages decided before a stop but never confirmed by Kafka: sent again with
        the next flush (receivers ignore what they already had, by msg_id or session)."""
        for rec in self.store.outbox():
            try:
                message = from_wire(rec["wire"])
            except ProtocolError as exc:  # not from this version: nothing to send
                log.error("dropping unreadable outbox entry %s: %s", rec.get("msg_id"), exc)
                self.store.remove(OUTBOX, str(rec.get("msg_id")))
                continue
            self._seq = max(self._seq, int(rec.get("seq", 0)))
            self.unsent.add(message.msg_id, rec["topic"], message, rec["key"])
            self._new.append(message.msg_id)
        if self._new:
            log.info("re-sending %d messages that Kafka had not confirmed", len(self._new))

    def first_time(self, d: Delivery, late: bool = False) -> bool:
        """Count the record as read; False when it was applied before (a redelivery)."""
        tp = (d.topic, d.partition)
        if d.offset < self.applied.get(tp, 0):
            return False
        self.applied[tp] = d.offset + 1
        self.store.set_offset(d.topic, d.partition, d.offset + 1, late=late)
        self._acks.append(d)
        return True

    def emit(self, topic: str, message: Message, key: str) -> None:
        """Decide a Kafka message: stored with this batch, sent once the batch is stored."""
        self._seq += 1
        self.store.put(OUTBOX, {"msg_id": message.msg_id, "seq": self._seq, "topic": topic,
                                "key": key, "wire": message.to_wire()})
        self.unsent.add(message.msg_id, topic, message, key)
        self._new.append(message.msg_id)

    def flush(self) -> None:
        """Store the batch (state, outbox, offsets), then announce it and ack what it read."""
        self.store.commit()
        new, self._new = self._new, []
        for msg_id in new:
            self.unsent.send_now(msg_id)
        acks, self._acks = self._acks, []
        if self.acker is not None and acks:
            self.acker.ack_all(acks)

    def publish(self, topic: str, message: Message | None, key: str,
                status_of: str | None = None) -> bool:
        """Send what is not in the outbox (central's heartbeat, a CP's public state: the
        next one replaces it); False when it was not even queued."""
        try:
            self.outbox.send(topic, message, key, on_done=self._confirmer(status_of))
            return True
        except BusError as exc:
            log.debug("%s not sent: %s", message.TYPE if message else "tombstone", exc)
            return False

    def on_sent(self, event: Sent) -> None:
        if event.ok:
            self.last_confirm = time.monotonic()
        if event.msg_id is None:
            return
        # Confirmed: out of the stored outbox. Refused for good: kept there, so that a
        # restart (the cause mended) sends it again; not sent again in this run.
        if self.unsent.settle(event.msg_id, event.error) is Verdict.CONFIRMED:
            self.store.remove(OUTBOX, event.msg_id)

    def take_verdicts(self) -> list[Sent]:
        """The verdicts that arrived since the last take (the brain's thread)."""
        with self._verdicts_lock:
            verdicts, self._verdicts = self._verdicts, []
        return verdicts

    def _verdict(self, sent: Sent) -> None:
        """A verdict, from the producer's thread: kept for the brain, which an event
        wakes when it has none waiting yet (a thread hand-over per batch of verdicts,
        not per message)."""
        with self._verdicts_lock:
            wake = not self._verdicts
            self._verdicts.append(sent)
        if wake:
            self.events.put(Verdicts())

    def _report(self, msg_id: str, error: BusError | None) -> None:
        """Kafka's verdict on an outbox message, from the producer's thread."""
        self._verdict(Sent(msg_id, error))

    def _confirmer(self, status_of: str | None) -> Done:
        return lambda error: self._verdict(Sent(None, error, status_of=status_of))
