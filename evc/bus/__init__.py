"""KafkaBus: the only package that imports kafka-python.

    with KafkaBus("10.0.0.2:9092", prefix="demo-") as bus:
        bus.ensure_topics()
        bus.send(REQUESTS, ChargeRequest(...), key="CP-01", on_done=confirmed)
        consumer = bus.consumer([CONTROL], keys={CONTROL: ["D-23"]})  # only my partition
        consumer.run(handle, stop_event)                               # typed messages

Every Kafka failure surfaces as ``BusError`` through one mapping (``errors``), keeping
its cause and saying whether a retry may help. ``send`` never blocks long
(``max_block_ms``): it queues, and ``on_done`` reports the broker's verdict from the
producer's thread. Malformed records are logged and handed to ``on_skip`` (never
fatal), so the owner can account for their offsets in order.

    config        the login (SASL/SCRAM) and the policy every client shares
    errors        kafka-python's errors as BusError; whether a producer was fenced
    records       messages as record values; a key's partition
    client        KafkaBus (producer, admin, consumer factory), open_bus, retrying, ping
    consumer      Consumer: assigned partitions, acks and commits, gathering fetches
    transactions  Transactions: the active central's transactional producer
    changelog     ChangelogReader: central's state as a standby follows it
    lease         Lease: which central is active (Kafka's group coordinator)
    acls          a secure broker's users and ACLs
"""

from evc.bus.acls import ROLES, provision, role_acls
from evc.bus.changelog import ChangelogReader
from evc.bus.client import KafkaBus, open_bus, ping, retrying
from evc.bus.config import DEFAULT_CONNECT_TIMEOUT, Sasl
from evc.bus.consumer import GATHER_BYTES, Consumer, Read
from evc.bus.errors import bus_error, fenced, kafka_errors
from evc.bus.lease import Lease
from evc.bus.records import decode, encode, partition_for
from evc.bus.transactions import Transactions

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT", "GATHER_BYTES", "ROLES", "ChangelogReader", "Consumer", "Read",
    "KafkaBus", "Lease", "Sasl", "Transactions", "bus_error", "decode", "encode", "fenced",
    "kafka_errors", "open_bus", "partition_for", "ping", "provision", "retrying", "role_acls",
]
