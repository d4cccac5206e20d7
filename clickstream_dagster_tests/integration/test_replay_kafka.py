"""click_data against a real Kafka broker: everything a replay claims is consumed and checked."""

import json
import time
import uuid
from collections import defaultdict

import polars as pl
import pytest
from dagster import materialize
from confluent_kafka import Producer
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.partitioner.default import murmur2
from quixstreams import Application

from clickstream_dagster.assets import prepare, replay
from clickstream_dagster.kafka_client import KafkaSettings, read_committed_since, stable_end_offsets
from clickstream_dagster.generator import write_log
from clickstream_dagster.resources.kafka import KafkaResource
from clickstream_dagster.resources.schema_registry import SchemaRegistryResource
from clickstream_dagster.resources.log_file import ClickstreamLogFile
from clickstream_dagster.resources.parquet import DailyParquetIOManager

pytestmark = pytest.mark.integration
DAY = "2012-03-03"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A generated log, prepared into daily Parquet once for the module."""
    root = tmp_path_factory.mktemp("replay")
    write_log(root / "clickstream.csv", rows=6000, seed=11)
    storage = root / "parquet"
    res = {
        "clickstream_log": ClickstreamLogFile(path=str(root / "clickstream.csv")),
        "parquet_io_manager": DailyParquetIOManager(base_dir=str(storage)),
    }
    assert materialize(
        [prepare.clickstream_events],
        resources=res,
        tags={"dagster/asset_partition_range_start": "2012-03-01", "dagster/asset_partition_range_end": "2012-03-15"},
    ).success
    return res


@pytest.fixture
def topic(kafka_bootstrap_servers):
    """A topic name nobody created yet: the replay must create it."""
    name = f"click-data-test-{uuid.uuid4().hex[:8]}"
    yield name
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap_servers)
    try:
        if name in admin.list_topics():
            admin.delete_topics([name])
    finally:
        admin.close()


@pytest.fixture(params=["kafka-python", "librdkafka"])
def client(request):
    """The producer library: every claim below holds for both."""
    return request.param


def run_replay(prepared, bootstrap, instance, day=DAY, client="kafka-python", **config):
    resources = prepared | {
        "kafka": KafkaResource(bootstrap_servers=bootstrap, connect_timeout_s=10, client=client),
        "schema_registry": SchemaRegistryResource(),
    }
    return materialize(
        [prepare.clickstream_events, replay.click_data],
        selection=[replay.click_data],
        resources=resources,
        instance=instance,
        partition_key=day,
        run_config={"ops": {"click_data": {"config": config}}},
        raise_on_error=False,
    )


def consume_all(bootstrap, topic, expected, deadline_s=60):
    """Every record of the topic, polling until ``expected`` arrived or the deadline passed."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        records, end = [], time.monotonic() + deadline_s
        while len(records) < expected and time.monotonic() < end:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def day_rows(prepared, day=DAY) -> pl.DataFrame:
    base = prepared["parquet_io_manager"].base_dir
    return pl.read_parquet(f"{base}/clickstream_events/{day}.parquet")


def test_a_max_paced_replay_delivers_every_row_keyed_and_in_order(prepared, kafka_bootstrap_servers, topic, dagster_instance, client):
    rows = day_rows(prepared)
    result = run_replay(prepared, kafka_bootstrap_servers, dagster_instance, client=client, topic=topic, pacing="max")
    assert result.success
    records = consume_all(kafka_bootstrap_servers, topic, rows.height)
    assert len(records) == rows.height

    # Every field equals the Parquet row; the key is the userId.
    sent = sorted((json.loads(r.value) for r in records), key=lambda m: (m["original_timestamp"], m["userId"], m["ip"], m["productId"] or "", m["userAgent"] or ""))
    expected = rows.sort(pl.all()).to_dicts()
    assert [{k: m[k] for k in rows.columns} for m in sent] == sorted(expected, key=lambda m: (m["original_timestamp"], m["userId"], m["ip"], m["productId"] or "", m["userAgent"] or ""))
    assert all(r.key.decode() == json.loads(r.value)["userId"] for r in records)
    # Whichever client sent them, keys land where kafka-python (and Java clients) put them.
    partitions = len({r.partition for r in records})
    assert all(r.partition == (murmur2(r.key) & 0x7FFFFFFF) % partitions for r in records)

    # One visitor's page views stay in the file's order within their Kafka partition.
    by_key = defaultdict(list)
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        by_key[r.key.decode()].append(json.loads(r.value)["original_timestamp"])
    expected_by_key = rows.group_by("userId", maintain_order=True).agg("original_timestamp")
    assert {u: list(ts) for u, ts in expected_by_key.iter_rows()} == dict(by_key)

    headers = dict(records[0].headers)
    assert headers == {"source_day": DAY.encode(), "dagster_run_id": result.run_id.encode()}

    [mat] = result.asset_materializations_for_node("click_data")
    assert mat.metadata["messages"].value == rows.height
    assert mat.metadata["bytes"].value == sum(len(r.value) for r in records)
    offsets = {r.data["partition"]: (r.data["first_offset"], r.data["last_offset"]) for r in mat.metadata["kafka_offsets"].records}
    # The offsets of the records read back (transaction markers take offsets in between).
    by_partition = defaultdict(list)
    for r in records:
        by_partition[r.partition].append(r.offset)
    assert offsets == {p: (min(o), max(o)) for p, o in by_partition.items()}
    assert dagster_instance.get_run_by_id(result.run_id).tags[replay.TOPIC_TAG] == topic


def test_a_fixed_interval_replay_is_spaced_as_configured(prepared, kafka_bootstrap_servers, topic, dagster_instance, client):
    n, interval_ms = 300, 20
    result = run_replay(prepared, kafka_bootstrap_servers, dagster_instance, client=client, topic=topic, pacing="fixed", interval_ms=interval_ms, limit=n)
    assert result.success
    records = consume_all(kafka_bootstrap_servers, topic, n)
    sent_ms = sorted(json.loads(r.value)["timestamp"] for r in records)
    span_ms = sent_ms[-1] - sent_ms[0]
    expected_ms = (n - 1) * interval_ms
    # An absolute schedule cannot run early; ignoring pacing would take ~0.1 s, not ~6 s.
    assert expected_ms - 50 <= span_ms <= expected_ms * 2
    [mat] = result.asset_materializations_for_node("click_data")
    assert mat.metadata["messages"].value == n
    assert mat.metadata["messages_planned"].value == n
    assert mat.metadata["day_rows"].value == day_rows(prepared).height  # the whole day, not the limit
    assert "lateness_p99_ms" in mat.metadata and "final_drift_ms" in mat.metadata


def test_quix_streams_3_reads_every_row_of_a_quix_replay_with_original_timestamps(
    prepared, kafka_bootstrap_servers, topic, dagster_instance, tmp_path, client
):
    rows = day_rows(prepared)
    started_ns = time.time_ns()
    result = run_replay(
        prepared, kafka_bootstrap_servers, dagster_instance, client=client,
        topic=topic, pacing="max", message_format="quix", record_timestamp="original",
    )
    assert result.success

    # A reader no one here wrote, configured as Quix's docs show; bounded by count and idle timeout.
    app = Application(
        broker_address=kafka_bootstrap_servers, consumer_group=f"quix-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest", state_dir=str(tmp_path / "quix-state"), auto_create_topics=False,
    )
    app.dataframe(app.topic(topic, key_deserializer="str", value_deserializer="quix"))
    outputs = app.run(count=rows.height, timeout=30, metadata=True)

    assert len(outputs) == rows.height
    fields = ["original_timestamp", "userId", "ip", "productId", "userAgent"]
    # metadata=True: each output is the row's fields plus the record's "_key", "_timestamp", ...
    got = sorted(tuple(o[f] for f in fields) for o in outputs)
    expected = sorted((float(r[0]), *r[1:]) for r in rows.select(fields).iter_rows())
    assert got == expected
    for o in outputs:
        assert o["_key"] == o["userId"]
        assert o["_timestamp"] == o["original_timestamp"] * 1000  # the Kafka record time
        assert started_ns < o["Timestamp"] < time.time_ns()  # the replay time, in ns


def test_a_topic_created_for_original_timestamps_keeps_them_without_time_limit(
    prepared, kafka_bootstrap_servers, topic, dagster_instance
):
    result = run_replay(
        prepared, kafka_bootstrap_servers, dagster_instance, topic=topic, pacing="max", limit=5, record_timestamp="original"
    )
    assert result.success
    assert topic_setting(kafka_bootstrap_servers, topic, "retention.ms") == "-1"
    assert len(consume_all(kafka_bootstrap_servers, topic, 5)) == 5


def test_original_timestamps_into_a_topic_that_would_delete_them_fail_before_sending(
    prepared, kafka_bootstrap_servers, kafka_topic, dagster_instance
):
    # kafka_topic has the broker's default retention (7 days): records from 2012 would go at once.
    retention = topic_setting(kafka_bootstrap_servers, kafka_topic, "retention.ms")
    result = run_replay(
        prepared, kafka_bootstrap_servers, dagster_instance, topic=kafka_topic, pacing="max", limit=5,
        record_timestamp="original",
    )
    assert not result.success
    message = step_failure(result)
    assert f"retention.ms={retention}" in message
    assert f"--entity-name {kafka_topic} --add-config retention.ms=-1" in message
    assert "allow_retention_deletes" in message
    assert end_offsets(kafka_bootstrap_servers, kafka_topic) == 0  # nothing was sent

    accepted = run_replay(
        prepared, kafka_bootstrap_servers, dagster_instance, topic=kafka_topic, pacing="max", limit=5,
        record_timestamp="original", allow_retention_deletes=True,
    )
    assert accepted.success
    assert len(consume_all(kafka_bootstrap_servers, kafka_topic, 5)) == 5


def test_original_timestamps_into_a_topic_that_restamps_them_fail_before_sending(
    prepared, kafka_bootstrap_servers, kafka_topic, dagster_instance
):
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap_servers)
    try:
        admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, kafka_topic, {"message.timestamp.type": "LogAppendTime"})]
        )
    finally:
        admin.close()
    result = run_replay(
        prepared, kafka_bootstrap_servers, dagster_instance, topic=kafka_topic, pacing="max", limit=5,
        record_timestamp="original", allow_retention_deletes=True,
    )
    assert not result.success
    assert "message.timestamp.type=LogAppendTime" in step_failure(result)
    assert end_offsets(kafka_bootstrap_servers, kafka_topic) == 0


def test_limit_zero_sends_nothing_and_records_no_replay(prepared, kafka_bootstrap_servers, topic, dagster_instance):
    result = run_replay(prepared, kafka_bootstrap_servers, dagster_instance, topic=topic, limit=0)
    assert result.success
    assert result.asset_materializations_for_node("click_data") == []
    logs = [entry.user_message for entry in dagster_instance.all_logs(result.run_id)]
    assert any("limit 0: nothing sent" in m for m in logs)
    assert not any("has no page views" in m for m in logs)


def test_a_topic_name_colliding_with_another_is_refused_as_such(prepared, kafka_bootstrap_servers, dagster_instance):
    suffix = uuid.uuid4().hex[:8]
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap_servers)
    try:
        admin.create_topics({f"click.data.{suffix}": {"num_partitions": 1, "replication_factor": 1}})
        result = run_replay(prepared, kafka_bootstrap_servers, dagster_instance, topic=f"click_data_{suffix}", limit=1)
        assert not result.success
        assert f"collides with existing topic: click.data.{suffix}" in step_failure(result)
    finally:
        admin.delete_topics([f"click.data.{suffix}"])
        admin.close()


def step_failure(result) -> str:
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    return failure.event_specific_data.error.message


def topic_setting(bootstrap, topic, name) -> str:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        found = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic, {name: None})], config_filter="all")
        return found["topic"][topic][name]["value"]
    finally:
        admin.close()


def end_offsets(bootstrap, topic) -> int:
    """The topic's end offsets, summed: 0 until anything (a record or a transaction marker) is written."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        return sum(consumer.end_offsets(partitions).values())
    finally:
        consumer.close()


def test_dry_run_sends_nothing_and_reports_the_expected_duration(prepared, kafka_bootstrap_servers, topic, dagster_instance):
    rows = day_rows(prepared)
    result = run_replay(prepared, kafka_bootstrap_servers, dagster_instance, topic=topic, pacing="fixed", interval_ms=100, dry_run=True)
    assert result.success
    assert result.asset_materializations_for_node("click_data") == []
    [observation] = [e.event_specific_data.asset_observation for e in result.all_events if e.event_type_value == "ASSET_OBSERVATION"]
    assert observation.metadata["dry_run_messages"].value == rows.height
    assert observation.metadata["dry_run_expected_duration_s"].value == pytest.approx((rows.height - 1) * 0.1)
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap_servers)
    try:
        assert topic not in admin.list_topics()
    finally:
        admin.close()


def test_a_dead_broker_fails_the_run_naming_the_servers(prepared, dagster_instance, local_kafka):
    dead = f"127.0.0.1:{local_kafka.free_port()}"
    resources = prepared | {"kafka": KafkaResource(bootstrap_servers=dead, connect_timeout_s=3), "schema_registry": SchemaRegistryResource()}
    result = materialize(
        [prepare.clickstream_events, replay.click_data], selection=[replay.click_data], resources=resources,
        instance=dagster_instance, partition_key=DAY, raise_on_error=False,
    )
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert f"Kafka at {dead}" in failure.event_specific_data.error.message
    assert "within 3 s" in failure.event_specific_data.error.message


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"speed": 0, "pacing": "original"}, "speed=0"),
        ({"topic": "bad topic"}, "topic='bad topic'"),
        ({"topic": "."}, "topic='.'"),
        ({"topic": ".."}, "topic='..'"),
        ({"limit": -1}, "limit=-1"),
        ({"interval_ms": 1e15}, "interval_ms=1000000000000000.0"),
        ({"event_date": "2012-3-1"}, "event_date='2012-3-1'"),
        ({"visitor_epoch": -1}, "visitor_epoch=-1"),
        ({"late_share": 1.5}, "late_share=1.5"),
        ({"late_share": 0.5, "duplicate_share": 0.6}, "add up to at most 1"),
    ],
)
def test_bad_config_fails_once_before_sending(prepared, kafka_bootstrap_servers, dagster_instance, config, named):
    result = run_replay(prepared, kafka_bootstrap_servers, dagster_instance, **config)
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert named in failure.event_specific_data.error.message


def test_an_empty_day_succeeds_with_zero_messages(tmp_path, kafka_bootstrap_servers, topic, dagster_instance):
    log = tmp_path / "one-day.csv"
    log.write_text("original_timestamp,userId,ip,productId,userAgent\n1330560000,F6F8B460-4204-4C26-A32C-B93826EDCB99,1.2.3.4,VD1,UA\n")
    res = {
        "clickstream_log": ClickstreamLogFile(path=str(log)),
        "parquet_io_manager": DailyParquetIOManager(base_dir=str(tmp_path / "parquet")),
    }
    assert materialize([prepare.clickstream_events], resources=res, partition_key="2012-03-02").success
    result = run_replay(res, kafka_bootstrap_servers, dagster_instance, day="2012-03-02", topic=topic)
    assert result.success
    [mat] = result.asset_materializations_for_node("click_data")
    assert mat.metadata["messages"].value == 0
    assert "0 messages" in mat.metadata["note"].value


def test_the_end_of_a_read_includes_the_commit_that_just_returned(kafka_bootstrap_servers, topic):
    """A commit returns before the broker writes its markers: the end offsets every reader of
    the project reads to (the asset check's, the checkpoints') must not stop before it."""
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap_servers)
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap_servers)
    admin.create_topics([NewTopic(topic, 1, 1)])
    admin.close()
    producer = Producer({"bootstrap.servers": kafka_bootstrap_servers, "transactional.id": topic, "retry.backoff.ms": 5})
    producer.init_transactions(30)
    reader = KafkaConsumer(bootstrap_servers=kafka_bootstrap_servers, isolation_level="read_committed")
    partition = TopicPartition(topic, 0)
    short = []
    try:
        for commit in range(1, 16):  # the bare last stable offset was short after about one commit in three
            producer.begin_transaction()
            for _ in range(100):
                producer.produce(topic, b"v", b"k")
            producer.commit_transaction(30)
            end = stable_end_offsets(settings, reader, [partition])[partition]
            if end != commit * 101:  # 100 records and a commit marker per transaction
                short.append((commit * 101, end))
        assert not short, f"(end after the commit, end read) right after a commit: {short}"
        assert len(read_committed_since(settings, topic, {})) == 1500
    finally:
        reader.close()
