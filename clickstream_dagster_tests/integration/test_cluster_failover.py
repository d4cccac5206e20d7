"""Exactly-once replays on a 3-node KRaft cluster (replication 3, min.insync.replicas 2) while
nodes fail: a partition leader killed, the transaction coordinator killed mid-commit, a rolling
restart, a node paused past delivery_timeout_s. Both clients. Each replay is read back with
read_committed and checked by the project's verifier: every row once, each visitor's rows in
order. The run completes, or fails within its bound and a resume completes it."""

import os
import signal
import threading
import time

import pytest
from kafka import KafkaAdminClient
from kafka.admin.client import CoordinatorType
from kafka.errors import KafkaError

from clickstream_dagster.checkpoints import transactional_id
from clickstream_dagster.readback import verify_replay
from clickstream_dagster.resources.kafka import KafkaResource
from clickstream_dagster_tests.integration.test_crash_safety import (  # noqa: F401 - fixtures
    DAY,
    checkpoint_of,
    client,
    day_rows,
    materialize_replay,
    prepared,
    read_committed,
    topic,
    wait_for,
)
from clickstream_dagster_tests.kafka_fixtures import heal_cluster

pytestmark = pytest.mark.integration
ROWS = 1500


def admin_call(cluster, call, what: str, timeout_s: float = 60.0):
    """``call(admin)`` through a fresh admin client (no cached leaders or coordinators), retried
    while the cluster cannot answer yet."""
    def attempt():
        try:
            admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap_servers, request_timeout_ms=10000)
        except KafkaError:
            return None
        try:
            return call(admin)
        except KafkaError:
            return None
        finally:
            admin.close()

    return wait_for(attempt, timeout_s, what, every_s=0.5)


def partition_leader(cluster, topic: str, partition: int = 0) -> int:
    def leader(admin):
        [described] = admin.describe_topics([topic])
        return next((p["leader_id"] for p in described["partitions"] if p["partition_index"] == partition and p["leader_id"] >= 0), None)

    return admin_call(cluster, leader, f"the leader of {topic}/{partition}")


def transaction_coordinator(cluster, topic: str) -> int:
    return admin_call(
        cluster,
        lambda admin: admin._manager.run(admin._find_coordinator_id, transactional_id(topic), CoordinatorType.TRANSACTION),
        f"the transaction coordinator of {transactional_id(topic)}",
    )


def replay_through(fault, cluster, prepared, topic, client, instance, *, delivery_timeout_s=30.0, **config):
    """Replay ROWS rows of DAY (RF 3) while ``fault(cluster)`` runs once 200 are committed; if the
    run fails, a resume must complete it. Then read back and verify. Returns the run results."""
    rows = day_rows(prepared).head(ROWS)
    kafka = KafkaResource(
        bootstrap_servers=cluster.bootstrap_servers, client=client, topic_replication_factor=3,
        connect_timeout_s=10, delivery_timeout_s=delivery_timeout_s,
    )
    # Hang detector, not a timing: 3 attempts (the step's 2 retries, 5 + 10 s apart), each ending
    # within its connect and delivery timeouts once the cluster holds, plus the fault's own time.
    bound_s = 3 * (10 + 2 * delivery_timeout_s) + 15 + 180
    outcome = {}
    thread = threading.Thread(
        target=lambda: outcome.setdefault("result", materialize_replay(prepared, kafka, instance=instance, topic=topic, limit=ROWS, **config))
    )
    thread.start()
    try:
        wait_for(lambda: (c := checkpoint_of(cluster.bootstrap_servers, topic)) and c.next_row >= 200, 90, "200 committed rows")
        assert checkpoint_of(cluster.bootstrap_servers, topic).next_row < ROWS, "the replay ended before the fault"
        fault(cluster)
    finally:
        thread.join(bound_s)
    assert not thread.is_alive(), f"the replay hangs after {bound_s:g} s"
    results = [outcome["result"]]
    if not results[0].success:
        results.append(materialize_replay(prepared, kafka, instance=instance, topic=topic, limit=ROWS, pacing="max", resume=True))
        assert results[-1].success, "the resume did not complete the replay"
    records = read_committed(cluster.bootstrap_servers, topic)
    check = verify_replay(
        [(r.partition, r.offset, r.key, dict(r.headers), r.value) for r in records],
        day=DAY, run_ids=[r.run_id for r in results], expected_rows=rows.height,
    )
    assert check.passed and len(records) == rows.height, (check, len(records))
    return results


def test_the_leader_of_a_partition_killed_mid_replay(prepared, kafka_cluster, topic, dagster_instance, client):
    """kill -9 of the node leading partition 0 of the replay's topic: the controller fences it
    (broker session timeout), a replica in sync takes over, the producer retries there."""

    def kill_leader(cluster):
        os.kill(cluster.node(partition_leader(cluster, topic)).pid, signal.SIGKILL)

    replay_through(kill_leader, kafka_cluster, prepared, topic, client, dagster_instance, pacing="fixed", interval_ms=10)


def test_the_transaction_coordinator_killed_mid_commit(prepared, kafka_cluster, topic, dagster_instance, client):
    """kill -9 of the node coordinating the replay's transactional id (FindCoordinator), while a
    commit waits for it: the node is stopped (SIGSTOP) first, and a fixed-paced replay commits
    before each wait and at least every 100 ms, so within the second it stays stopped a commit
    (EndTxn, or the next transaction's AddPartitions) has been sent to it unanswered; then it is
    killed. The coordinator moves with the leadership of its __transaction_state partition.

    With kafka-python it delivered rows twice in 4 runs of 9 until a batch that fails for good
    (the commit's checkpoint, expired on the killed node) refused the commit
    (``kafka_client._abort_on_any_failed_batch``; its unit test is deterministic)."""

    def kill_coordinator_mid_commit(cluster):
        node = cluster.node(transaction_coordinator(cluster, topic))
        os.kill(node.pid, signal.SIGSTOP)
        time.sleep(1.0)  # the fault itself: commits pile up on the stopped coordinator
        os.kill(node.pid, signal.SIGKILL)

    replay_through(kill_coordinator_mid_commit, kafka_cluster, prepared, topic, client, dagster_instance, pacing="fixed", interval_ms=10)


def test_a_rolling_restart_of_all_three_nodes_during_a_replay(prepared, kafka_cluster, topic, dagster_instance, client):
    """Each node in turn: stopped as an operator does (SIGTERM, a controlled shutdown that moves
    its leaderships away), started again on its port and data dir, and caught up (every replica
    back in sync) before the next one."""

    def rolling_restart(cluster):
        for node_id in [node.node_id for node in cluster.nodes]:
            cluster.node(node_id).stop()
            heal_cluster(cluster)

    replay_through(rolling_restart, kafka_cluster, prepared, topic, client, dagster_instance, pacing="fixed", interval_ms=30)


def test_a_node_paused_past_delivery_timeout_then_resumed(prepared, kafka_cluster, topic, dagster_instance, client):
    """The coordinator's node (every commit needs it) stopped for longer than delivery_timeout_s
    (5 s), then continued: the run either rides it out or fails within its bound; a resume then
    completes it."""
    delivery_timeout_s = 5.0

    def pause_coordinator(cluster):
        node = cluster.node(transaction_coordinator(cluster, topic))
        os.kill(node.pid, signal.SIGSTOP)
        try:
            time.sleep(delivery_timeout_s + 5)  # the fault itself
        finally:
            os.kill(node.pid, signal.SIGCONT)

    replay_through(
        pause_coordinator, kafka_cluster, prepared, topic, client, dagster_instance,
        delivery_timeout_s=delivery_timeout_s, pacing="fixed", interval_ms=10,
    )
