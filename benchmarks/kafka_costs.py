"""What kafka-python itself costs central: CPU per transaction and per fetch, measured
alone against the real broker (no evc code in the loop).

    python -m benchmarks.kafka_costs [--kafka HOST:PORT] [--json]

Transactions: a transactional producer configured as central's (idempotent, acks=all,
linger 0, retry backoff 5 ms) commits 300 transactions of 1, 10 and 50 records over 3
partitions; its process CPU per transaction. Fetches: a read_committed consumer of 9
partitions, as central's (3 topics of 3), fetching with ``fetch.max.wait.ms`` 20 and a
large ``fetch.min.bytes`` while a producer in another process writes 0 or 600 records a
second; its CPU per second and per fetch. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import uuid
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

PAYLOAD = b'{"type":"authorization","note":"' + b"x" * 300 + b'"}'  # a record's size


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def topic(admin: KafkaAdminClient, partitions: int) -> str:
    name = f"bench-kafka-{uuid.uuid4().hex[:8]}"
    admin.create_topics([NewTopic(name, partitions, 1)])
    time.sleep(1.0)  # leaders elected
    return name


def transactions(kafka: str, admin: KafkaAdminClient, records: int, count: int = 300
                 ) -> dict[str, float]:
    name = topic(admin, 3)
    producer = KafkaProducer(bootstrap_servers=kafka, transactional_id=f"tx-{name}",
                             enable_idempotence=True, acks="all", linger_ms=0,
                             retry_backoff_ms=5, metrics_enabled=False)
    try:
        producer.init_transactions()
        for _ in range(20):  # warm: connections, metadata, the coordinator
            producer.begin_transaction()
            producer.send(name, PAYLOAD, partition=0)
            producer.commit_transaction()
        cpu0, wall0 = cpu(), time.monotonic()
        for _ in range(count):
            producer.begin_transaction()
            for j in range(records):
                producer.send(name, PAYLOAD, key=b"k%d" % j, partition=j % 3)
            producer.commit_transaction()
        took, wall = cpu() - cpu0, time.monotonic() - wall0
    finally:
        producer.close()
        admin.delete_topics([name])
    return {"records": records, "cpu_ms_per_transaction": round(1000 * took / count, 2),
            "wall_ms_per_transaction": round(1000 * wall / count, 2)}


def fetches(kafka: str, admin: KafkaAdminClient, rate: int, seconds: float = 15.0
            ) -> dict[str, float]:
    name = topic(admin, 9)
    writer = subprocess.Popen([sys.executable, "-c", f"""
import time
from kafka import KafkaProducer
p = KafkaProducer(bootstrap_servers={kafka!r}, linger_ms=5)
n, end = 0, time.monotonic() + {seconds + 4}
while time.monotonic() < end:
    for _ in range({rate} // 20):
        p.send({name!r}, {PAYLOAD!r}, partition=n % 9)
        n += 1
    time.sleep(0.05)
p.flush()
"""])
    consumer = KafkaConsumer(bootstrap_servers=kafka, isolation_level="read_committed",
                             fetch_max_wait_ms=20, fetch_min_bytes=256 << 10,
                             metrics_enabled=False)
    requests = 0
    try:
        consumer.assign([TopicPartition(name, p) for p in range(9)])
        consumer.seek_to_end()
        fetcher = consumer._fetcher  # noqa: SLF001 - counting its fetch requests
        send = fetcher._send_fetches_async  # noqa: SLF001

        def counted(*args: Any, **kwargs: Any) -> Any:
            nonlocal requests
            requests += 1
            return send(*args, **kwargs)

        fetcher._send_fetches_async = counted  # noqa: SLF001
        end = time.monotonic() + 2.0
        while time.monotonic() < end:  # warm
            consumer.poll(timeout_ms=200)
        got, requests = 0, 0
        cpu0, wall0 = cpu(), time.monotonic()
        while time.monotonic() - wall0 < seconds:
            got += sum(len(v) for v in consumer.poll(timeout_ms=200).values())
        took, wall = cpu() - cpu0, time.monotonic() - wall0
    finally:
        consumer.close()
        writer.wait(30)
        admin.delete_topics([name])
    return {"records_per_s": round(got / wall), "fetch_sends_per_s": round(requests / wall, 1),
            "cpu_pct": round(100 * took / wall, 1),
            "cpu_ms_per_fetch": round(1000 * took / max(1, requests), 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kafka", default="127.0.0.1:9092")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args()
    import kafka

    admin = KafkaAdminClient(bootstrap_servers=args.kafka)
    figures: dict[str, Any] = {"kafka_python": kafka.__version__, "transactions": [],
                               "fetches": []}
    try:
        for records in (1, 10, 50):
            row = transactions(args.kafka, admin, records)
            figures["transactions"].append(row)
            print(f"transaction of {records:2d} records: {row['cpu_ms_per_transaction']} ms "
                  f"of CPU, {row['wall_ms_per_transaction']} ms wall", flush=True)
        for rate in (0, 600):
            row = fetches(args.kafka, admin, rate)
            figures["fetches"].append(row)
            print(f"consumer of 9 partitions, {row['records_per_s']} records/s: "
                  f"{row['fetch_sends_per_s']} fetch rounds/s, {row['cpu_pct']} % of a core, "
                  f"{row['cpu_ms_per_fetch']} ms of CPU per fetch round", flush=True)
    finally:
        admin.close()
    print(f"kafka-python {figures['kafka_python']}")
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
