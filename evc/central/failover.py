"""Which central is active, and what each one does meanwhile: the terms.

Every central of a network (same broker, same topic prefix) joins the lease: the one
Kafka's group coordinator gives its single partition is the active one and runs an
``ActiveTerm`` (fence the previous holder, catch up with the changelog, run the brain);
any other is the ``Standby`` (follow the changelog into its store, refuse monitors,
show the network read-only) until the lease comes to it. A term that is fenced steps
down to standby. command.py starts the parts and alternates the two.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import socket
import threading
import time

from evc.bus import ChangelogReader, Consumer, KafkaBus, Lease, Read, Transactions, retrying
from evc.central import pairing, power
from evc.central.board import BoardView
from evc.central.brain import Brain
from evc.central.config import CONSUMER_GATHER, CentralConfig
from evc.central.events import (
    CENTRAL_RECORD_TYPES,
    BusMessage,
    BusRecords,
    BusSkipped,
    Event,
    MonitorFrame,
    OperatorKey,
    OperatorLine,
    Verdicts,
)
from evc.central.server import MonitorServer
from evc.central.standby import StandbyModel
from evc.central.view import PlainView
from evc.errors import BusError
from evc.lifecycle import Crew
from evc.protocol.messages import (
    CentralStatus,
    OperatorAnswer,
    RegisterRejected,
    RejectCode,
    StandbyStatus,
)
from evc.protocol.topics import (
    CENTRAL_KEY,
    CHANGELOG,
    LEASE,
    NETWORK,
    OPERATOR,
    REQUESTS,
    STANDBY_KEY,
    TELEMETRY,
)
from evc.store import DRIVERS, META, OUTBOX, AuditLog, Store
from evc.store.credentials import CredentialFiles

log = logging.getLogger("evc.central")


def join_the_lease(bus: KafkaBus, cfg: CentralConfig, crew: Crew,
                   stop: threading.Event) -> Lease:
    """Join the election of this network's active central (broker and topic prefix).

    The lease is the single partition of central_lease, held through Kafka's group
    coordinator: the member holding it is the active central, any other is a standby.
    Static membership: this central, restarted on the same database, takes its own
    place back at once; another one waits for a dead holder's session to time out.
    """
    digest = hashlib.sha1(str(cfg.db_path.resolve()).encode()).hexdigest()[:10]
    instance = f"central-{socket.gethostname()}-{digest}"
    group = f"{cfg.common.topic_prefix}evc-central-lease"
    lease = retrying(lambda: Lease(bus, LEASE, group, instance,
                                   session_timeout=cfg.lease_timeout),
                     wait=cfg.common.kafka_wait, stop=stop)
    crew.spawn(lease.run, stop, name="central-lease")
    return lease


class Standby:
    """The standby central's loop (one thread: the caller's): follows the changelog into
    the store, refuses monitors, shows the network read-only; returns once the lease is
    held (or on stop)."""

    def __init__(self, bus: KafkaBus, store: Store, reader: ChangelogReader,
                 server: MonitorServer, events: queue.Queue[Event],
                 view: PlainView | BoardView, identity: str = "") -> None:
        self.bus, self.store, self.reader = bus, store, reader
        self.server, self.events, self.view = server, events, view
        self.model = StandbyModel()
        self.status: Consumer | None = None
        self.identity = identity
        self.key = STANDBY_KEY + identity.split(" ")[0]  # @standby/<host>:<port>

    def follow(self, lease: Lease, stop: threading.Event) -> None:
        self.model.reload(self.store)
        if self.status is None:
            self.status = retrying(lambda: self.bus.consumer(
                [NETWORK], keys={NETWORK: [CENTRAL_KEY]}, from_beginning=True),
                wait=3600, stop=stop)
        self.view.note("standby: following the active central; monitors are sent to it")
        try:
            self._follow(lease, stop)
        finally:  # taking over, or stopping: no longer a standby
            self._say(None)

    def _say(self, status: StandbyStatus | None) -> None:
        """That this standby is there (None: no longer), on network_topic."""
        try:
            self.bus.send(NETWORK, status, self.key)
        except BusError as exc:
            log.debug("standby status not sent: %s", exc)

    def _follow(self, lease: Lease, stop: threading.Event) -> None:
        assert self.status is not None
        next_draw = next_say = 0.0
        changed = False  # since the model was last rebuilt (at most twice a second)
        while not stop.is_set() and not lease.held.is_set():
            if time.monotonic() >= next_say:
                self._say(StandbyStatus(central=self.identity, active=self.model.active))
                next_say = time.monotonic() + 2.0
            changes = self.reader.poll(0.2)
            if changes:
                self.store.apply_changes(changes)
                self.store.commit()
                changed = True
            for msg, _ in self.status.poll(0.0):
                if isinstance(msg, CentralStatus):
                    self.model.heard_active(msg.central, msg.started_at, msg.epoch)
            self._events(stop)
            if time.monotonic() >= next_draw:
                if changed:
                    self.model.reload(self.store)
                    changed = False
                self.view.refresh(self.model)  # type: ignore[arg-type]
                next_draw = time.monotonic() + 0.5

    def _events(self, stop: threading.Event) -> None:
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return
            match event:
                case MonitorFrame():
                    active = self.model.active or "not known yet"
                    self.server.close_connection(event.conn_id, "standby", RegisterRejected(
                        cp_id=event.message.cp_id, code=RejectCode.STANDBY,
                        reason=f"this central is the standby; the active one is {active}"))
                case OperatorLine():
                    self._operator(event.text, stop)
                case OperatorKey():
                    line = self.view.key(event.key)
                    if line is not None:
                        self._operator(line, stop)
                case _:  # Kafka's records and verdicts belonged to the term that ended
                    pass

    def _operator(self, line: str, stop: threading.Event) -> None:
        if line.strip().lower() in ("quit", "exit", "q"):
            stop.set()
        elif line.strip():
            self.view.note(f"standby (read-only): give operator commands to the "
                           f"active central ({self.model.active or 'not known yet'})",
                           "warning")

    def close(self) -> None:
        if self.status is not None:
            self.status.close()


def hand_out(store: Store, credentials: CredentialFiles) -> None:
    """Write the credential files this machine lacks (or holds an old version of): the
    network's state may have come from the changelog, made by another central."""
    for rec in store.cps() + store.all(DRIVERS):
        ident, secret = rec.get("cp_id") or rec.get("driver_id"), rec.get("secret")
        if not ident or not secret:
            continue
        try:
            current = credentials.path(ident).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            current = ""
        if current != secret:
            credentials.write(ident, secret)


def wait_for_lease(lease: Lease, stop: threading.Event) -> bool:
    """At start: True once this central holds the lease; False when the coordinator gave
    it to another (a live central: this one is its standby)."""
    deadline = time.monotonic() + 20  # a broker just started, a first rebalance
    while not stop.is_set() and time.monotonic() < deadline:
        if lease.held.wait(0.2):
            return True
        if lease.decided.is_set():
            return lease.held.wait(1.0)  # a holder that just died may still be leaving
    if not lease.held.is_set() and not stop.is_set():
        log.warning("no answer from Kafka's group coordinator about the lease in 20 s: "
                    "following as a standby until it gives this central the lease")
    return lease.held.is_set()


class ActiveTerm:
    """One term as the active central: fence the previous one, catch up, run the brain
    until stop or until another central fences this one."""

    def __init__(self, cfg: CentralConfig, bus: KafkaBus, store: Store,
                 reader: ChangelogReader, server: MonitorServer, events: queue.Queue[Event],
                 view: PlainView | BoardView, identity: str, credentials: CredentialFiles,
                 audit: AuditLog, stop: threading.Event) -> None:
        self.cfg, self.bus, self.store, self.reader = cfg, bus, store, reader
        self.server, self.events, self.view = server, events, view
        self.identity, self.credentials, self.audit = identity, credentials, audit
        self.stop = stop
        self.stepped_down = False

    def run(self, lease: Lease, *, publish_all: bool,
            registry: list[tuple[str, str, float, str | None]], drivers: list[str],
            took_over: bool, sites: list[tuple[str, float | None]] | None = None) -> None:
        cfg, store, stop = self.cfg, self.store, self.stop
        common = cfg.common
        started = time.monotonic()
        # Fencing first: from here on the previous central can commit nothing, so the
        # changelog's end is final; then catch up to it.
        txn = retrying(lambda: Transactions(self.bus, f"{common.topic_prefix}evc-central",
                                            CHANGELOG, leader=lease.held.is_set),
                       wait=3600, stop=stop)
        term_stop = threading.Event()
        crew = Crew(term_stop)
        brain: Brain | None = None
        committer: threading.Thread | None = None
        try:
            caught = store.apply_changes(retrying(lambda: self.reader.read_to_end(stop),
                                                  wait=3600, stop=stop))
            store.replica = txn.replicate
            if publish_all and not caught:
                txn.replicate(store.changes())  # an empty changelog gets this database
            else:
                # The changelog holds the network's state, written in the transactions of
                # the messages it decided: whatever this store still has in its outbox
                # (a term that was deposed) was never seen by anyone, and neither was its
                # state. Nothing to send again.
                for rec in store.outbox():
                    store.remove(OUTBOX, str(rec["msg_id"]))
            meta = store.get(META, "epoch") or {}
            epoch = int(meta.get("value", 0)) + 1
            store.put(META, {"name": "epoch", "value": epoch, "central": self.identity,
                             "at": time.time()})
            self.drain()
            hand_out(store, self.credentials)
            brain = Brain(store, txn, self.server, self.view, cfg.settings, events=self.events,
                          identity=self.identity, credentials=self.credentials,
                          audit=self.audit, epoch=epoch,
                          # a failover keeps the board as it was while monitors move over;
                          # a restart starts from nobody connected
                          presume=cfg.heartbeat_timeout if took_over else 0.0)
            for site_id, limit in sites or []:
                brain.set_site_limit(site_id, limit)
            for cp_id, location, price, cp_site in registry:
                brain.upsert_cp(cp_id, location, price, cp_site)
            for driver_id in drivers:
                brain.upsert_driver(driver_id)
            if cfg.pair:
                for ident in [row[0] for row in registry] + list(drivers):
                    pairing.pair_command(brain, ident, replace=False)
            power.reallocate_all(brain)  # the shares, before any new authorization
            store.commit()
            # Central reads from where its store says it stopped applying (the group's
            # committed offsets are only a fallback, and a gauge of its lag).
            consumer = retrying(lambda: self.bus.consumer(
                [REQUESTS, TELEMETRY, OPERATOR], group_id=f"{common.topic_prefix}evc-central",
                from_beginning=True, start=brain.out.applied, gather=CONSUMER_GATHER),
                wait=common.kafka_wait, stop=stop)
            brain.out.acker = consumer
            # a daemon: a commit waits for the broker as long as it is away (what it
            # holds is in the store), and must not hold the process at a stop
            committer = crew.spawn(txn.run, term_stop, name="central-transactions",
                                   daemon=True)
            crew.spawn(consumer.run_batches, self._records, term_stop, 0.2,
                       name="central-kafka")

            def ends_the_term() -> None:
                while not term_stop.is_set():
                    if stop.wait(0.2) or txn.fenced.is_set():
                        term_stop.set()

            crew.spawn(ends_the_term, name="central-term")
            took = time.monotonic() - started
            self.view.note(f"central ready (active, term {epoch}, took over in {took:.1f} s): "
                           f"monitors on {self.server.address}, Kafka {cfg.kafka}, "
                           f"{len(brain.cps)} charge points in {cfg.db_path}")
            brain.run(term_stop)
            if brain.quit_requested.is_set():
                stop.set()
            self.stepped_down = txn.fenced.is_set() and not stop.is_set()
        finally:
            term_stop.set()
            store.replica = None
            crew.join(1.5)
            if committer is not None and not self.stepped_down:
                # a clean stop: the committer's last transaction (what is queued) reaches
                # the changelog, within a second
                committer.join(1.0)
            if self.stepped_down and brain is not None:
                for conn_id in list(brain.by_conn) + list(brain.challenges):
                    self.server.close_connection(conn_id, "this central stepped down")
        crew.check()

    def _records(self, reads: list[Read]) -> None:
        """What a poll of requests_topic, telemetry_topic and operator_topic read, for the
        brain (from the consumer's thread) as one event: a malformed record, or one of
        another type, is skipped, its offset counted as read."""
        records: list[BusMessage | BusSkipped] = []
        for message, delivery, error in reads:
            if message is None:
                records.append(BusSkipped(delivery, error))
            elif isinstance(message, CENTRAL_RECORD_TYPES):
                records.append(BusMessage(message, delivery))
            elif isinstance(message, OperatorAnswer):  # central's own, on operator_topic
                records.append(BusSkipped(delivery, "an answer to an operator"))
            else:
                log.warning("skipping %s on %s: not a message for central", message.TYPE,
                            delivery.topic)
                records.append(BusSkipped(delivery, f"{message.TYPE} is not for central"))
        self.events.put(BusRecords(tuple(records)))

    def drain(self) -> None:
        """Kafka events of an earlier term are not this term's (the consumer starts again
        from the stored offsets); monitors and the operator are served as they came."""
        kept: list[Event] = []
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                break
            if not isinstance(event, (BusRecords, Verdicts)):
                kept.append(event)
        for event in kept:
            self.events.put(event)
