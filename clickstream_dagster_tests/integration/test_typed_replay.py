"""Typed messages against a real broker and a real schema registry (Apicurio, started by the
session): each format on both clients read back with confluent-kafka's deserializers (Avro
also with fastavro), Quix Streams 3 on Avro, kill -9 and resume, and every failure before
anything is sent."""

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import fastavro
import polars as pl
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.schema_registry.json_schema import JSONDeserializer
from confluent_kafka.schema_registry.protobuf import ProtobufDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext
from dagster import AssetCheckEvaluation, materialize
from kafka import KafkaAdminClient
from quixstreams import Application
from quixstreams.models.serializers.avro import AvroDeserializer as QuixAvroDeserializer
from quixstreams.models.serializers.schema_registry import SchemaRegistryClientConfig

from clickstream_dagster.assets import prepare, replay
from clickstream_dagster.checkpoints import ReplayStatus
from clickstream_dagster.resources.kafka import KafkaResource
from clickstream_dagster.resources.schema_registry import SchemaRegistryResource
from clickstream_dagster.typed_encoding import TypedFormat, page_view_class, schema_file, schema_id_of
from clickstream_dagster_tests.integration.test_crash_safety import (  # noqa: F401 - prepared: a fixture
    checkpoint_of,
    cli_replay,
    prepared,
    read_committed,
    replay_logs,
    wait_for,
)
from clickstream_dagster_tests.registry_fixtures import load_local_registry

pytestmark = pytest.mark.integration
DAY = "2012-03-04"
LIMIT = 400  # a short day: every format on both clients stays cheap
FIELDS = ["original_timestamp", "userId", "ip", "productId", "userAgent"]


@pytest.fixture
def topic():
    return f"typed-{uuid.uuid4().hex[:10]}"


def day_rows(prepared, limit: int | None = LIMIT) -> pl.DataFrame:
    rows = pl.read_parquet(f"{prepared['parquet_io_manager'].base_dir}/clickstream_events/{DAY}.parquet")
    return rows.head(limit) if limit else rows


def typed_replay(prepared, bootstrap, registry: SchemaRegistryResource, instance, client="kafka-python", **config):
    """The replay and its read-back check, as the replay_clickstream job runs them."""
    return materialize(
        [prepare.clickstream_events, replay.click_data, replay.delivered_exactly_once],
        selection=[replay.click_data, replay.delivered_exactly_once],
        resources=prepared | {
            "kafka": KafkaResource(bootstrap_servers=bootstrap, connect_timeout_s=10, client=client),
            "schema_registry": registry,
        },
        instance=instance,
        partition_key=DAY,
        run_config={"ops": {"click_data": {"config": {"pacing": "max", "limit": LIMIT} | config}}},
        raise_on_error=False,
    )


def deserializer(fmt: TypedFormat, client: SchemaRegistryClient):
    if fmt == TypedFormat.AVRO:
        return AvroDeserializer(client)
    if fmt == TypedFormat.JSON_SCHEMA:
        return JSONDeserializer(schema_file(fmt), schema_registry_client=client)
    return ProtobufDeserializer(page_view_class(), {"use.deprecated.format": False}, client)


def as_row(fmt: TypedFormat, value) -> tuple:
    """A deserialized value as the Parquet row's fields (Protobuf: an absent optional is None)."""
    if fmt == TypedFormat.PROTOBUF:
        return tuple(getattr(value, f) if f not in ("productId", "userAgent") or value.HasField(f) else None for f in FIELDS)
    return tuple(value[f] for f in FIELDS)


def assert_every_row_once_in_order(records, rows: pl.DataFrame, decoded: list[tuple]) -> None:
    assert sorted(decoded, key=repr) == sorted(rows.iter_rows(), key=repr)
    assert len(set(decoded)) == len(decoded) == rows.height
    by_key = defaultdict(list)
    for record, row in sorted(zip(records, decoded), key=lambda pair: (pair[0].partition, pair[0].offset)):
        assert record.key.decode() == row[1]
        by_key[row[1]].append(row[0])
    expected = rows.group_by("userId", maintain_order=True).agg("original_timestamp")
    assert dict(by_key) == {user: list(ts) for user, ts in expected.iter_rows()}


def check_passed(result) -> bool:
    (evaluation,) = [
        e.event_specific_data for e in result.all_events if isinstance(e.event_specific_data, AssetCheckEvaluation)
    ]
    return evaluation.passed


@pytest.mark.parametrize("client", ["kafka-python", "librdkafka"])
@pytest.mark.parametrize("fmt", list(TypedFormat))
def test_each_format_is_read_back_by_confluent_kafkas_deserializers(
    prepared, kafka_bootstrap_servers, schema_registry_url, topic, dagster_instance, fmt, client
):
    rows = day_rows(prepared)
    started_ms = time.time_ns() // 1_000_000
    result = typed_replay(
        prepared, kafka_bootstrap_servers, SchemaRegistryResource(url=schema_registry_url), dagster_instance,
        client=client, topic=topic, message_format=fmt.value,
    )
    assert result.success
    assert check_passed(result)  # the asset check decoded every row through the registry

    records = read_committed(kafka_bootstrap_servers, topic, settle_s=1.0)
    registry = SchemaRegistryClient({"url": schema_registry_url})
    read = deserializer(fmt, registry)
    ctx = SerializationContext(topic, MessageField.VALUE)
    values = [read(r.value, ctx) for r in records]
    assert_every_row_once_in_order(records, rows, [as_row(fmt, v) for v in values])
    replay_ms = [v.timestamp if fmt == TypedFormat.PROTOBUF else v["timestamp"] for v in values]
    if fmt == TypedFormat.AVRO:  # timestamp-millis, read as an aware datetime
        replay_ms = [round(t.timestamp() * 1000) for t in replay_ms]
    assert all(started_ms <= t <= time.time_ns() // 1_000_000 for t in replay_ms)
    # One schema, registered under <topic>-value.
    (schema_id,) = {schema_id_of(r.value) for r in records}
    assert registry.get_latest_version(f"{topic}-value").schema_id == schema_id

    if fmt == TypedFormat.AVRO:
        # A reader that knows nothing of Confluent: fastavro on the payload after the 5-byte
        # header, with the writer's schema fetched from the registry by id.
        writer = fastavro.parse_schema(json.loads(registry.get_schema(schema_id).schema_str))
        plain = [fastavro.schemaless_reader(io.BytesIO(r.value[5:]), writer, None) for r in records]
        assert [tuple(p[f] for f in FIELDS) for p in plain] == [as_row(fmt, v) for v in values]


def test_quix_streams_reads_the_avro_topic_through_the_registry(
    prepared, kafka_bootstrap_servers, schema_registry_url, topic, dagster_instance, tmp_path
):
    rows = day_rows(prepared)
    registry = SchemaRegistryResource(url=schema_registry_url, subject_strategy="topic_name")
    assert typed_replay(prepared, kafka_bootstrap_servers, registry, dagster_instance, topic=topic, message_format="avro").success
    app = Application(
        broker_address=kafka_bootstrap_servers, consumer_group=f"quix-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest", state_dir=str(tmp_path / "quix-state"), auto_create_topics=False,
    )
    value_deserializer = QuixAvroDeserializer(schema_registry_client_config=SchemaRegistryClientConfig(url=schema_registry_url))
    app.dataframe(app.topic(topic, key_deserializer="str", value_deserializer=value_deserializer))
    outputs = app.run(count=rows.height, timeout=30, metadata=True)
    assert sorted((tuple(o[f] for f in FIELDS) for o in outputs), key=repr) == sorted(rows.iter_rows(), key=repr)
    assert all(o["_key"] == o["userId"] for o in outputs)


def test_kill_9_mid_replay_then_resume_with_avro_delivers_every_row_exactly_once(
    prepared, kafka_bootstrap_servers, schema_registry_url, topic, tmp_path, monkeypatch
):
    rows = day_rows(prepared, limit=None)
    monkeypatch.setenv("SCHEMA_REGISTRY_URL", schema_registry_url)  # the CLI's definitions read it
    home = tmp_path / "home"
    first = cli_replay(prepared, kafka_bootstrap_servers, home, day=DAY, topic=topic, pacing="fixed", interval_ms=25, message_format="avro")
    try:
        wait_for(lambda: (c := checkpoint_of(kafka_bootstrap_servers, topic, DAY)) and c.next_row >= 100, 90,
                 "100 committed rows", details=lambda: replay_logs(home))
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)
    killed_at = checkpoint_of(kafka_bootstrap_servers, topic, DAY)
    assert killed_at.status == ReplayStatus.RUNNING and killed_at.next_row < rows.height

    second = cli_replay(prepared, kafka_bootstrap_servers, home, day=DAY, topic=topic, pacing="max", resume=True, message_format="avro")
    assert second.wait(180) == 0, replay_logs(home)
    records = read_committed(kafka_bootstrap_servers, topic)
    read = AvroDeserializer(SchemaRegistryClient({"url": schema_registry_url}))
    ctx = SerializationContext(topic, MessageField.VALUE)
    assert_every_row_once_in_order(records, rows, [as_row(TypedFormat.AVRO, read(r.value, ctx)) for r in records])
    assert len({dict(r.headers)["dagster_run_id"] for r in records}) == 2
    # Both attempts framed their values with the one schema id of the subject.
    assert len({schema_id_of(r.value) for r in records}) == 1


@pytest.mark.parametrize("fmt", ["avro", "protobuf", "json_schema"])
def test_clickstream_tail_prints_decoded_records(
    prepared, kafka_bootstrap_servers, schema_registry_url, topic, dagster_instance, fmt
):
    rows = day_rows(prepared, limit=20)
    registry = SchemaRegistryResource(url=schema_registry_url)
    assert typed_replay(prepared, kafka_bootstrap_servers, registry, dagster_instance, topic=topic, message_format=fmt, limit=20).success
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "SCHEMA_REGISTRY_"))}
    command = [sys.executable, "-m", "clickstream_dagster.tail", "--bootstrap-servers", kafka_bootstrap_servers,
               "--topic", topic, "--from-beginning", "--limit", "20", "--timeout", "30"]
    done = subprocess.run([*command, "--format", "json"], capture_output=True, text=True, timeout=120,
                          env=env | {"SCHEMA_REGISTRY_URL": schema_registry_url})
    assert done.returncode == 0, done.stderr
    values = [json.loads(line)["value"] for line in done.stdout.splitlines()]
    assert sorted((tuple(v[f] for f in FIELDS) for v in values), key=repr) == sorted(rows.iter_rows(), key=repr)
    assert all(isinstance(v["timestamp"], int) for v in values)
    # The table shows the product of each row too.
    table = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env | {"SCHEMA_REGISTRY_URL": schema_registry_url})
    assert all(p in table.stdout for p in rows["productId"].drop_nulls()), table.stdout


# --------------------------------------------------------------------------- failures


def topic_exists(bootstrap: str, topic: str) -> bool:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        return topic in admin.list_topics()
    finally:
        admin.close()


def failure_of(result) -> str:
    assert not result.success
    failures = [e for e in result.all_events if e.is_failure]
    return "\n".join(f"{e.message}\n{getattr(getattr(e.event_specific_data, 'error', None), 'message', '')}" for e in failures)


def test_a_subject_whose_compatibility_rejects_the_schema_fails_naming_subject_and_rule(
    prepared, kafka_bootstrap_servers, schema_registry_url, topic, dagster_instance
):
    registry = SchemaRegistryClient({"url": schema_registry_url})
    subject = f"{topic}-value"
    older = json.loads(schema_file("avro"))
    older["fields"][0]["type"] = "string"  # original_timestamp was a string: a long cannot read it
    registry.register_schema(subject, Schema(json.dumps(older), "AVRO"))
    registry.set_compatibility(subject, "BACKWARD")
    result = typed_replay(
        prepared, kafka_bootstrap_servers, SchemaRegistryResource(url=schema_registry_url), dagster_instance,
        topic=topic, message_format="avro",
    )
    message = failure_of(result)
    assert f"subject '{subject}'" in message and "BACKWARD" in message, message
    assert not topic_exists(kafka_bootstrap_servers, topic)  # nothing sent, nothing created


def test_a_latest_version_lacking_a_field_fails_without_auto_register(
    prepared, kafka_bootstrap_servers, schema_registry_url, topic, dagster_instance
):
    registry = SchemaRegistryClient({"url": schema_registry_url})
    lacking = json.loads(schema_file("avro"))
    lacking["fields"] = [f for f in lacking["fields"] if f["name"] != "userAgent"]
    registry.register_schema(f"{topic}-value", Schema(json.dumps(lacking), "AVRO"))
    result = typed_replay(
        prepared, kafka_bootstrap_servers, SchemaRegistryResource(url=schema_registry_url, auto_register=False),
        dagster_instance, topic=topic, message_format="avro",
    )
    message = failure_of(result)
    assert f"subject '{topic}-value'" in message and "lacks the field(s) userAgent" in message, message
    assert not topic_exists(kafka_bootstrap_servers, topic)


def test_without_auto_register_the_latest_version_is_used(
    prepared, kafka_bootstrap_servers, schema_registry_url, topic, dagster_instance
):
    registry = SchemaRegistryClient({"url": schema_registry_url})
    schema_id = registry.register_schema(f"{topic}-value", Schema(schema_file("json_schema"), "JSON"))
    result = typed_replay(
        prepared, kafka_bootstrap_servers, SchemaRegistryResource(url=schema_registry_url, auto_register=False),
        dagster_instance, topic=topic, message_format="json_schema", limit=20,
    )
    assert result.success and check_passed(result)
    assert {schema_id_of(r.value) for r in read_committed(kafka_bootstrap_servers, topic, settle_s=1.0)} == {schema_id}


def test_the_record_name_strategy_registers_one_subject_for_the_record(
    prepared, kafka_bootstrap_servers, schema_registry_url, topic, dagster_instance
):
    registry = SchemaRegistryResource(url=schema_registry_url, subject_strategy="record_name")
    result = typed_replay(prepared, kafka_bootstrap_servers, registry, dagster_instance, topic=topic, message_format="avro", limit=20)
    assert result.success and check_passed(result)
    ids = {schema_id_of(r.value) for r in read_committed(kafka_bootstrap_servers, topic, settle_s=1.0)}
    client = SchemaRegistryClient({"url": schema_registry_url})
    assert ids == {client.get_latest_version("clickstream.PageView").schema_id}
    assert f"{topic}-value" not in client.get_subjects()


def test_an_unreachable_registry_fails_naming_its_url(prepared, kafka_bootstrap_servers, topic, dagster_instance):
    # What a stopped registry looks like to a client: nothing listens on its port.
    url = f"http://127.0.0.1:{load_local_registry().free_port()}/apis/ccompat/v7"
    result = typed_replay(
        prepared, kafka_bootstrap_servers, SchemaRegistryResource(url=url, timeout_s=3), dagster_instance,
        topic=topic, message_format="protobuf",
    )
    message = failure_of(result)
    assert f"schema registry at {url} is unreachable" in message, message
    assert not topic_exists(kafka_bootstrap_servers, topic)


def test_an_https_registry_is_trusted_through_the_ca_file_only(prepared, kafka_bootstrap_servers, topic, dagster_instance, tmp_path):
    registry = load_local_registry().start_registry(tmp_path / "tls-registry", tls=True)
    try:
        untrusted = typed_replay(
            prepared, kafka_bootstrap_servers, SchemaRegistryResource(url=registry.url), dagster_instance,
            topic=topic, message_format="json_schema", limit=20,
        )
        message = failure_of(untrusted)
        assert f"schema registry at {registry.url}: its TLS certificate is not trusted" in message, message
        assert not topic_exists(kafka_bootstrap_servers, topic)
        trusted = SchemaRegistryResource(url=registry.url, ca_file=str(registry.ca_file))
        result = typed_replay(
            prepared, kafka_bootstrap_servers, trusted, dagster_instance, topic=topic, message_format="json_schema", limit=20,
        )
        assert result.success and check_passed(result)
    finally:
        registry.stop()


class _Refusing(BaseHTTPRequestHandler):
    """A registry that refuses every credential, as one with basic auth on does (401)."""

    def do_POST(self):  # noqa: N802 - http.server's naming
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"error_code": 401, "message": "Unauthorized"}')

    do_GET = do_POST  # noqa: N815

    def log_message(self, *args):
        pass


def test_refused_credentials_fail_naming_the_user_never_the_password(
    prepared, kafka_bootstrap_servers, topic, dagster_instance
):
    # Apicurio 2.6's basic auth goes through an OIDC server (Keycloak): a registry answering
    # 401 is the client's view of refused credentials.
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/apis/ccompat/v7"
        registry = SchemaRegistryResource(url=url, user_info="alice:wonderland-secret")
        result = typed_replay(prepared, kafka_bootstrap_servers, registry, dagster_instance, topic=topic, message_format="avro")
    finally:
        server.shutdown()
    message = failure_of(result)
    assert "refused user 'alice' (HTTP 401)" in message and url in message, message
    logs = "\n".join(str(e) for e in dagster_instance.all_logs(result.run_id))
    assert "wonderland-secret" not in logs
    assert not topic_exists(kafka_bootstrap_servers, topic)
