"""click_data against a real Kafka broker: everything a replay claims is consumed and checked."""

import json
import time
import uuid
from collections import defaultdict

import polars as pl
import pytest
from dagster import materialize
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.partitioner.default import murmur2

from clickstream_dagster.assets import prepare, replay
from clickstream_dagster.generator import write_log
from clickstream_dagster.resources.kafka import KafkaResource
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
    resources = prepared | {"kafka": KafkaResource(bootstrap_servers=bootstrap, connect_timeout_s=10, client=client)}
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
    assert "lateness_p99_ms" in mat.metadata and "final_drift_ms" in mat.metadata


def test_quix_format_with_original_record_timestamps(prepared, kafka_bootstrap_servers, topic, dagster_instance, client):
    rows = day_rows(prepared).head(50)
    result = run_replay(
        prepared, kafka_bootstrap_servers, dagster_instance, client=client,
        topic=topic, pacing="max", limit=50, message_format="quix", record_timestamp="original",
    )
    assert result.success
    records = consume_all(kafka_bootstrap_servers, topic, 50)
    assert sorted(r.timestamp for r in records) == sorted(ts * 1000 for ts in rows["original_timestamp"])
    value = json.loads(records[0].value)
    assert set(value) == {"Epoch", "Timestamps", "NumericValues", "StringValues", "TagValues"}
    assert value["StringValues"]["userId"] == [records[0].key.decode()]


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
    resources = prepared | {"kafka": KafkaResource(bootstrap_servers=dead, connect_timeout_s=3)}
    result = materialize(
        [prepare.clickstream_events, replay.click_data], selection=[replay.click_data], resources=resources,
        instance=dagster_instance, partition_key=DAY, raise_on_error=False,
    )
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert f"Kafka at {dead}" in failure.event_specific_data.error.message
    assert "within 3 s" in failure.event_specific_data.error.message


@pytest.mark.parametrize(("config", "named"), [({"speed": 0, "pacing": "original"}, "speed=0"), ({"topic": "bad topic"}, "topic='bad topic'"), ({"limit": -1}, "limit=-1")])
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
