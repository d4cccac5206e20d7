"""Prove that the broker from scripts/local_kafka.py is a real Kafka broker."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.serializer import DefaultSerializer, JsonSerializer

from clickstream_dagster_tests.kafka_fixtures import REPO_ROOT, LOCAL_KAFKA_PATH

pytestmark = pytest.mark.integration

DEADLINE_S = 60.0


def _consume(consumer: KafkaConsumer, topic: str, expected: int,
             deadline_s: float = DEADLINE_S) -> list:
    """Poll until ``expected`` records arrived and the consumer reached the end offsets
    of every partition (so nothing else is pending), or fail at the deadline."""
    records: list = []
    tps = [TopicPartition(topic, p) for p in range(3)]
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend(batch)
        if len(records) >= expected and consumer.assignment():
            ends = consumer.end_offsets(tps)
            if all(consumer.position(tp) >= ends[tp] for tp in tps
                   if tp in consumer.assignment()):
                return records
    pytest.fail(f"got {len(records)} of {expected} records from {topic} "
                f"within {deadline_s:.0f}s")


def test_idempotent_produce_then_consume(kafka_bootstrap_servers: str, kafka_topic: str) -> None:
    n = 300
    keys = [f"user-{i % 17}" for i in range(n)]
    producer = KafkaProducer(
        bootstrap_servers=kafka_bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        key_serializer=DefaultSerializer(),
        value_serializer=JsonSerializer(),
    )
    try:
        futures = [producer.send(kafka_topic, key=keys[i], value={"seq": i, "key": keys[i]})
                   for i in range(n)]
        producer.flush(timeout=30)
        metadata = [f.get(timeout=30) for f in futures]
    finally:
        producer.close(timeout=10)

    assert {m.partition for m in metadata} <= {0, 1, 2}
    partition_of_key: dict[str, int] = {}
    for key, m in zip(keys, metadata):
        assert partition_of_key.setdefault(key, m.partition) == m.partition

    consumer = KafkaConsumer(
        kafka_topic,
        bootstrap_servers=kafka_bootstrap_servers,
        group_id=f"{kafka_topic}-group",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        key_deserializer=DefaultSerializer(),
        value_deserializer=JsonSerializer(),
    )
    try:
        records = _consume(consumer, kafka_topic, n)
    finally:
        consumer.close()

    assert len(records) == n  # idempotent producer: no duplicates
    assert sorted(r.value["seq"] for r in records) == list(range(n))
    seqs_by_key: dict[str, list[int]] = defaultdict(list)
    for r in records:
        assert r.key == r.value["key"] == keys[r.value["seq"]]
        assert r.partition == partition_of_key[r.key]
        seqs_by_key[r.key].append(r.value["seq"])
    for key, seqs in seqs_by_key.items():
        assert seqs == sorted(seqs), f"per-key order broken for {key}"


def test_transactions_commit_and_abort(kafka_bootstrap_servers: str, kafka_topic: str) -> None:
    producer = KafkaProducer(
        bootstrap_servers=kafka_bootstrap_servers,
        transactional_id=f"{kafka_topic}-tx",
        key_serializer=DefaultSerializer(),
        value_serializer=DefaultSerializer(),
    )
    try:
        producer.init_transactions()
        producer.begin_transaction()
        for i in range(10):
            producer.send(kafka_topic, key=f"k{i}", value=f"committed-{i}")
        producer.commit_transaction()
        producer.begin_transaction()
        for i in range(5):
            producer.send(kafka_topic, key=f"k{i}", value=f"aborted-{i}")
        producer.flush(timeout=30)
        producer.abort_transaction()
    finally:
        producer.close(timeout=10)

    consumer = KafkaConsumer(
        kafka_topic,
        bootstrap_servers=kafka_bootstrap_servers,
        group_id=f"{kafka_topic}-group",
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        enable_auto_commit=False,
        value_deserializer=DefaultSerializer(),
    )
    try:
        records = _consume(consumer, kafka_topic, 10)
    finally:
        consumer.close()
    assert sorted(r.value for r in records) == sorted(f"committed-{i}" for i in range(10))


def _cli(*args: str, state_dir: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.setdefault("KAFKA_CLASSPATH_CACHE_DIR", str(REPO_ROOT / ".kafka"))
    return subprocess.run(
        [sys.executable, str(LOCAL_KAFKA_PATH), *args, "--state-dir", str(state_dir)],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO_ROOT,
    )


def test_cli_up_is_idempotent_and_down_stops(tmp_path: Path, local_kafka) -> None:
    state_dir = tmp_path / "kafka-state"
    port = local_kafka.free_port()
    pid = None
    try:
        first = _cli("up", "--port", str(port), state_dir=state_dir)
        assert first.returncode == 0, first.stdout + first.stderr
        assert f"127.0.0.1:{port}" in first.stdout
        assert "already" not in first.stdout.lower()
        pid = int((state_dir / "kafka.pid").read_text())
        assert local_kafka.pid_alive(pid)
        assert local_kafka.probe_broker("127.0.0.1", port) is None

        second = _cli("up", "--port", str(port), state_dir=state_dir)
        assert second.returncode == 0, second.stdout + second.stderr
        assert "already" in second.stdout.lower()
        assert int((state_dir / "kafka.pid").read_text()) == pid

        status = _cli("status", state_dir=state_dir)
        assert status.returncode == 0, status.stdout + status.stderr
        assert "running" in status.stdout

        down = _cli("down", state_dir=state_dir)
        assert down.returncode == 0, down.stdout + down.stderr
        assert "stopped" in down.stdout
        assert not local_kafka.pid_alive(pid)
        assert not (state_dir / "kafka.pid").exists()
        assert local_kafka.port_is_free(port)

        status = _cli("status", state_dir=state_dir)
        assert status.returncode == 1
        again = _cli("down", state_dir=state_dir)
        assert again.returncode == 0 and "no kafka broker running" in again.stdout.lower()
    finally:
        if pid is not None and local_kafka.pid_alive(pid):
            local_kafka.stop_broker(state_dir)


def test_cli_up_brokers_3_runs_a_replicated_cluster_that_status_and_down_handle(tmp_path: Path, local_kafka) -> None:
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
    from kafka.admin.client import CoordinatorType
    from kafka.errors import KafkaError

    state_dir = tmp_path / "cluster-state"
    try:
        up = _cli("up", "--brokers", "3", "--port", "0", state_dir=state_dir)
        assert up.returncode == 0, up.stdout + up.stderr
        [bootstrap] = [line.split(": ", 1)[1] for line in up.stdout.splitlines() if "bootstrap servers:" in line]
        assert len(set(bootstrap.split(","))) == 3 and all(s.startswith("127.0.0.1:") for s in bootstrap.split(","))

        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30000)
        try:
            assert len(admin.describe_cluster()["brokers"]) == 3
            # The broker's defaults: a topic created without a replication factor, and the
            # transactions' internal one (made by the first FindCoordinator), get 3 replicas and
            # min.insync.replicas 2.
            admin.create_topics([NewTopic("defaults", 1, -1)], timeout_ms=30000)
            deadline = time.monotonic() + 60
            while True:
                try:
                    admin._manager.run(admin._find_coordinator_id, "any", CoordinatorType.TRANSACTION)
                    break
                except KafkaError:
                    assert time.monotonic() < deadline, "no transaction coordinator within 60 s"
                    time.sleep(0.5)
            admin.wait_for_topics(["defaults", "__transaction_state"], timeout_ms=30000)
            for topic in ("defaults", "__transaction_state"):
                [described] = admin.describe_topics([topic])
                assert [len(p["replica_nodes"]) for p in described["partitions"]] == [3]
            configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, "__transaction_state", {"min.insync.replicas": None})])
            assert configs["topic"]["__transaction_state"]["min.insync.replicas"]["value"] == "2"
            # (kafka-python lists no static broker default for a topic: the project's topics
            # inherit the brokers' own setting)
            assert "min.insync.replicas=2" in (state_dir / "node-1" / "server.properties").read_text().splitlines()
        finally:
            admin.close()

        # One node dies: status says so (exit 1); up brings it back on its own port.
        os.kill(int((state_dir / "node-2" / "kafka.pid").read_text()), 9)
        status = _cli("status", state_dir=state_dir)
        assert status.returncode == 1 and "2 of 3 brokers running" in status.stdout, status.stdout
        again = _cli("up", "--brokers", "3", state_dir=state_dir)
        assert again.returncode == 0 and f"bootstrap servers: {bootstrap}" in again.stdout, again.stdout + again.stderr
        status = _cli("status", state_dir=state_dir)
        assert status.returncode == 0 and status.stdout.count(": pid ") == 3, status.stdout

        pids = [int((state_dir / f"node-{n}" / "kafka.pid").read_text()) for n in (1, 2, 3)]
        down = _cli("down", state_dir=state_dir)
        assert down.returncode == 0 and "cluster stopped" in down.stdout, down.stdout + down.stderr
        assert not any(local_kafka.pid_alive(pid) for pid in pids)
        assert _cli("status", state_dir=state_dir).returncode == 1
    finally:
        local_kafka.stop_broker(state_dir)
