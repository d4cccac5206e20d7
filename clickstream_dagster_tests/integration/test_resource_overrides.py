"""A run that sets one field of a resource keeps the environment's others, for real.

The code location is loaded by the real CLI with KAFKA_BOOTSTRAP_SERVERS naming the test's broker
(a free port, never 9092), CLICKSTREAM_CSV and CLICKSTREAM_STORAGE_DIR. Each run config sets one
field of each resource it uses; the day is prepared from that log into that storage, and the
replay lands on that broker: nothing connects to localhost:9092.
"""

import json
import os
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance
from dagster._core.instance.ref import InstanceRef
from kafka import KafkaAdminClient

from clickstream_dagster.generator import write_log
from clickstream_dagster.kafka_client import KafkaSettings, read_committed_since

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DAY, LIMIT = "2012-03-03", 40


class Listener:
    """Counts connections to localhost:9092, the class default a lost override falls back to."""

    def __init__(self) -> None:
        self.connections = 0
        self.sockets = []
        for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            try:
                server = socket.socket(family, socket.SOCK_STREAM)
                server.bind((host, 9092))
                server.listen()
            except OSError:  # taken (someone's broker: the read-back below still tells) or no IPv6
                server.close()
                continue
            self.sockets.append(server)
            threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            self.connections += 1
            connection.close()

    def close(self) -> None:
        for server in self.sockets:
            server.close()


def _materialize(env: dict[str, str], *args: str, run_config: dict) -> subprocess.CompletedProcess:
    command = [
        str(Path(sys.executable).with_name("dagster")), "asset", "materialize",
        "-m", "clickstream_dagster.definitions", *args, "--config-json", json.dumps(run_config),
    ]  # fmt: skip
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_one_field_set_in_the_run_config_keeps_broker_log_and_storage(tmp_path, kafka_bootstrap_servers):
    assert not kafka_bootstrap_servers.endswith(":9092"), "the broker must not be on the class default's port"
    log, storage, home = tmp_path / "my.csv", tmp_path / "days", tmp_path / "dagster_home"
    write_log(log, rows=1500, seed=3)
    home.mkdir()
    env = os.environ | {
        "DAGSTER_HOME": str(home),
        "CLICKSTREAM_CSV": str(log),
        "CLICKSTREAM_STORAGE_DIR": str(storage),
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap_servers,
    }
    topic = f"overrides-{uuid.uuid4().hex[:8]}"
    listener = Listener()
    try:
        prepared = _materialize(
            env, "--select", "clickstream_events,clickstream_rejects", "--partition", DAY,
            run_config={"resources": {"clickstream_log": {"config": {"max_line_bytes": 4096}}}},
        )  # fmt: skip
        assert prepared.returncode == 0, prepared.stderr[-3000:]
        assert (storage / "clickstream_events" / f"{DAY}.parquet").exists()

        replayed = _materialize(
            env, "--select", "click_data", "--partition", DAY,
            run_config={
                "resources": {
                    "kafka": {"config": {"topic_partitions": 2}},
                    "parquet_io_manager": {"config": {"storage_options": {}}},
                },
                "ops": {"click_data": {"config": {"topic": topic, "pacing": "max", "limit": LIMIT}}},
            },
        )  # fmt: skip
        assert replayed.returncode == 0, replayed.stderr[-3000:]
    finally:
        listener.close()

    assert listener.connections == 0
    # The topic is on the test's broker, with the partitions the run asked for, holding the day.
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap_servers)
    try:
        assert len(admin.describe_topics([topic])[0]["partitions"]) == 2
        assert len(read_committed_since(KafkaSettings(bootstrap_servers=kafka_bootstrap_servers), topic, {})) == LIMIT
        admin.delete_topics([topic])
    finally:
        admin.close()
    instance = DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
    materialization = instance.get_latest_materialization_event(AssetKey("click_data")).asset_materialization
    assert materialization.partition == DAY
    assert materialization.metadata["bootstrap_servers"].value == kafka_bootstrap_servers
