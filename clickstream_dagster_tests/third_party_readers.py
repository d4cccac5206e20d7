"""Read a topic back with consumers no one here wrote, as a replay's users do: Kafka's own
console consumer (from the jars the broker runs on) and librdkafka (confluent-kafka)."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from typing import NamedTuple

from clickstream_dagster_tests.kafka_fixtures import _classpath_cache_dir, load_local_kafka

CONSOLE_CONSUMER = "org.apache.kafka.tools.consumer.ConsoleConsumer"


class ReadRecord(NamedTuple):
    key: bytes
    value: bytes
    partition: int
    offset: int
    headers: dict[str, bytes] | None = None  # when the reader was asked to print them


def console_consumer_read(
    bootstrap: str, topic: str, count: int, timeout_s: float = 60.0, headers: bool = False
) -> list[ReadRecord]:
    """The first ``count`` records ``kafka-console-consumer --isolation-level read_committed`` prints
    (``headers``: with their headers, as it prints them: ``name:value,...`` or ``NO_HEADERS``)."""
    java = shutil.which("java")
    assert java, "java is needed to run Kafka's console consumer"
    classpath = load_local_kafka().resolve_classpath(_classpath_cache_dir(), _classpath_cache_dir())
    command = [
        java, "-cp", classpath, CONSOLE_CONSUMER, "--bootstrap-server", bootstrap, "--topic", topic,
        "--from-beginning", "--isolation-level", "read_committed", "--max-messages", str(count),
        "--timeout-ms", str(int(timeout_s * 1000)),
        *("--formatter-property", "print.key=true", "--formatter-property", "print.partition=true"),
        *("--formatter-property", "print.offset=true", "--formatter-property", "key.separator=\t"),
        *(("--formatter-property", "print.headers=true") if headers else ()),
    ]
    done = subprocess.run(command, capture_output=True, timeout=timeout_s + 60)
    records = []
    for line in done.stdout.splitlines():
        partition, offset, *printed, key, value = line.split(b"\t", 4 if headers else 3)
        record = ReadRecord(key, value, int(partition.removeprefix(b"Partition:")), int(offset.removeprefix(b"Offset:")))
        if headers:
            pairs = [] if printed[0] == b"NO_HEADERS" else [h.split(b":", 1) for h in printed[0].split(b",")]
            record = record._replace(headers={name.decode(): text for name, text in pairs})
        records.append(record)
    # It exits 0 on its idle timeout too: the count says whether it read everything.
    assert len(records) == count, f"console consumer read {len(records)} of {count}:\n{done.stderr.decode()[-2000:]}"
    return records


def confluent_read(bootstrap: str, topic: str, count: int, timeout_s: float = 60.0) -> list[ReadRecord]:
    """The first ``count`` records a confluent-kafka consumer with isolation.level=read_committed gets."""
    from confluent_kafka import Consumer

    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"readback-{uuid.uuid4().hex[:8]}",
        "auto.offset.reset": "earliest", "enable.auto.commit": False, "isolation.level": "read_committed",
    })
    try:
        consumer.subscribe([topic])
        records, deadline = [], time.monotonic() + timeout_s
        while len(records) < count and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=min(count - len(records), 10_000), timeout=1.0):
                assert message.error() is None, message.error()
                records.append(ReadRecord(message.key(), message.value(), message.partition(), message.offset()))
        assert len(records) == count, f"confluent-kafka read {len(records)} of {count} in {timeout_s:g} s"
        return records
    finally:
        consumer.close()
