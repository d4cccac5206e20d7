"""pytest plugin: a real single-node Kafka broker for integration tests.

Enable with ``pytest_plugins = ["clickstream_dagster_tests.kafka_fixtures"]``.

* ``kafka_bootstrap_servers`` (session): ``$KAFKA_BOOTSTRAP_SERVERS`` if set, otherwise a
  broker started by ``scripts/local_kafka.py`` on a free port in a temporary state dir,
  stopped at the end of the session. The resolved classpath is cached in
  ``$KAFKA_CLASSPATH_CACHE_DIR`` or the repo's ``.kafka/`` dir and the jars live in
  ``~/.m2``, so only the very first run ever calls Maven.
* ``kafka_topic`` (function): a fresh, uniquely named topic (3 partitions, RF 1) that is
  deleted afterwards.
* ``local_kafka`` (session): the ``scripts/local_kafka.py`` module itself.
* ``kafka_cluster`` (function): a 3-node KRaft cluster (replication 3, min.insync.replicas 2),
  started once per session by the first test that asks for it, on free ports in a temporary
  state dir. Per-node handles: ``cluster.nodes`` / ``cluster.node(id)`` (``pid``, ``port``,
  ``node_id``); ``cluster.start_node(id)`` brings a killed node back on its port and data dir.
  After each test every node runs again (resumed if paused, restarted if dead) and every
  partition has all 3 replicas in sync: tests may kill, pause or restart nodes.

``KAFKA_START_TIMEOUT_S`` (default 90) bounds the broker start.
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import sys
import time
import uuid
import warnings
from pathlib import Path
from types import ModuleType
from typing import Iterator

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCAL_KAFKA_PATH = REPO_ROOT / "scripts" / "local_kafka.py"
_MODULE_NAME = "clickstream_local_kafka"


def load_local_kafka() -> ModuleType:
    """Import scripts/local_kafka.py by path (it is a script, not a package module)."""
    module = sys.modules.get(_MODULE_NAME)
    if module is None:
        spec = importlib.util.spec_from_file_location(_MODULE_NAME, LOCAL_KAFKA_PATH)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {LOCAL_KAFKA_PATH}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[_MODULE_NAME] = module  # dataclasses need the module registered
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(_MODULE_NAME, None)
            raise
    return module


def load_local_services() -> ModuleType:
    """scripts/local_services.py, the launcher layer the local services share: the very module
    local_kafka.py imports (loading that puts scripts/ on sys.path), so that its errors are one
    class wherever they are caught."""
    load_local_kafka()
    import local_services

    return local_services


def _classpath_cache_dir() -> Path:
    return Path(os.environ.get("KAFKA_CLASSPATH_CACHE_DIR") or REPO_ROOT / ".kafka")


@pytest.fixture(scope="session")
def local_kafka() -> ModuleType:
    return load_local_kafka()


@pytest.fixture(scope="session")
def kafka_bootstrap_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if external:
        yield external
        return

    lk = load_local_kafka()
    state_dir = tmp_path_factory.mktemp("kafka-broker")
    timeout_s = float(os.environ.get("KAFKA_START_TIMEOUT_S") or lk.DEFAULT_TIMEOUT_S)
    try:
        broker = lk.start_broker(state_dir, lk.free_port(), timeout_s=timeout_s,
                                 cache_dir=_classpath_cache_dir())
    except lk.LocalKafkaError as exc:
        pytest.fail(f"could not start a local Kafka broker: {exc}", pytrace=False)
    try:
        yield broker.bootstrap_servers
    finally:
        broker.stop()


def _topic_name(node_name: str) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", node_name).strip("-.")[:80] or "topic"
    return f"test-{base}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def kafka_topic(kafka_bootstrap_servers: str, request: pytest.FixtureRequest) -> Iterator[str]:
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError, UnknownTopicOrPartitionError

    name = _topic_name(request.node.name)
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap_servers,
                             client_id="pytest-kafka-topic", request_timeout_ms=30000)
    try:
        admin.create_topics({name: {"num_partitions": 3, "replication_factor": 1}},
                            timeout_ms=30000)
        admin.wait_for_topics([name], timeout_ms=30000)  # every partition has a leader
        yield name
    finally:
        try:
            admin.delete_topics([name], timeout_ms=30000)
        except UnknownTopicOrPartitionError:
            pass  # never created, or the test deleted it itself
        except KafkaError as exc:
            warnings.warn(f"could not delete test topic {name}: {exc!r}", stacklevel=1)
        finally:
            admin.close()


CLUSTER_SIZE = 3


@pytest.fixture(scope="session")
def _kafka_cluster(tmp_path_factory: pytest.TempPathFactory):
    lk = load_local_kafka()
    timeout_s = float(os.environ.get("KAFKA_START_TIMEOUT_S") or lk.DEFAULT_TIMEOUT_S)
    try:
        cluster = lk.start_cluster(tmp_path_factory.mktemp("kafka-cluster"), CLUSTER_SIZE, port=0,
                                   timeout_s=timeout_s, cache_dir=_classpath_cache_dir())
    except lk.LocalKafkaError as exc:
        pytest.fail(f"could not start a local Kafka cluster: {exc}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()


def heal_cluster(cluster, timeout_s: float = 120.0) -> None:
    """Every node running (paused ones continued, dead ones restarted) and every partition's
    replicas all in sync: what the next test starts from."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    for node in cluster.nodes:
        if node.is_running():
            os.kill(node.pid, signal.SIGCONT)
    for node in list(cluster.nodes):
        cluster.start_node(node.node_id, timeout_s)
    deadline, lagging = time.monotonic() + timeout_s, ["not checked"]
    while time.monotonic() < deadline:
        try:
            admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap_servers, request_timeout_ms=10000)
            try:
                brokers = [b for b in admin.describe_cluster()["brokers"] if not b.get("is_fenced")]
                lagging = [f"{t['name']}/{p['partition_index']}: in sync {p['isr_nodes']}"
                           for t in admin.describe_topics() for p in t["partitions"]
                           if len(p["isr_nodes"]) < len(p["replica_nodes"])]
            finally:
                admin.close()
            if len(brokers) == len(cluster.nodes) and not lagging:
                return
            lagging = lagging or [f"{len(brokers)} brokers in metadata"]
        except KafkaError as exc:
            lagging = [repr(exc)]
        time.sleep(1)
    raise AssertionError(f"the cluster did not heal within {timeout_s:g} s: {lagging[:5]}")


@pytest.fixture
def kafka_cluster(_kafka_cluster):
    heal_cluster(_kafka_cluster)
    yield _kafka_cluster
    heal_cluster(_kafka_cluster)
