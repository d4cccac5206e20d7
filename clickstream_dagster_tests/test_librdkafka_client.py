"""The librdkafka publisher's configuration and selection: pure, no broker (that is in integration/)."""

import importlib
import sys
import time

import pytest
from confluent_kafka import KafkaError, Producer
from dagster import Failure

from clickstream_dagster.kafka_client import KafkaSettings
from clickstream_dagster.librdkafka_client import LibrdkafkaBatch, LibrdkafkaDelivery, librdkafka_config
from clickstream_dagster.resources.kafka import KafkaResource


def test_the_producer_is_idempotent_acks_all_bounded_and_partitions_like_kafka_python():
    config = librdkafka_config(KafkaSettings(" a:9092, b:9092", connect_timeout_s=7), delivery_timeout_s=12)
    assert config["bootstrap.servers"] == "a:9092,b:9092"
    assert (config["enable.idempotence"], config["acks"], config["partitioner"]) == (True, "all", "murmur2_random")
    assert config["message.timeout.ms"] == 12_000
    assert config["socket.connection.setup.timeout.ms"] == 7_000
    # A request may wait as long as the delivery bound: a shorter broker pause fails nothing.
    assert config["socket.timeout.ms"] == config["request.timeout.ms"] == 12_000
    assert config["security.protocol"] == "plaintext"
    assert "transactional.id" not in config and "sasl.password" not in config


def test_a_transactional_producer_keeps_the_transaction_timeout_above_the_delivery_bound():
    short = librdkafka_config(KafkaSettings("b:9092"), transactional_id="clickstream-replay-t", delivery_timeout_s=30)
    assert (short["transactional.id"], short["transaction.timeout.ms"]) == ("clickstream-replay-t", 60_000)
    long = librdkafka_config(KafkaSettings("b:9092"), transactional_id="x", delivery_timeout_s=90)
    assert long["transaction.timeout.ms"] == long["message.timeout.ms"] == 90_000


def test_security_settings_map_to_librdkafka_names():
    settings = KafkaSettings(
        "b:9093", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="u",
        sasl_password="s3cret", ssl_cafile="/ca.pem", ssl_certfile="/cert.pem", ssl_keyfile="/key.pem",
    )
    config = librdkafka_config(settings)
    assert {k: config[k] for k in config if k.startswith(("security.", "sasl.", "ssl."))} == {
        "security.protocol": "sasl_ssl",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "u",
        "sasl.password": "s3cret",
        "ssl.ca.location": "/ca.pem",
        "ssl.certificate.location": "/cert.pem",
        "ssl.key.location": "/key.pem",
    }


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"])
def test_librdkafka_accepts_every_mapped_configuration(protocol):
    """librdkafka itself checks names and values when a producer is created (no connection yet)."""
    sasl = {"sasl_mechanism": "PLAIN", "sasl_username": "u", "sasl_password": "p"} if protocol.startswith("SASL") else {}
    config = librdkafka_config(KafkaSettings("127.0.0.1:1", security_protocol=protocol, **sasl), transactional_id="t")
    producer = Producer(config)  # raises KafkaException on an unknown name or a bad value
    assert producer is not None


def test_a_delivery_report_reads_like_kafka_pythons_future():
    class Message:
        def partition(self):
            return 2

        def offset(self):
            return 41

        def latency(self):
            return 0.004

    delivery, seen = LibrdkafkaDelivery(), []
    delivery.add_callback(seen.append)
    assert not delivery.is_done
    delivery._report(None, Message())
    assert delivery.is_done and not delivery.failed()
    assert (delivery.value.partition, delivery.value.offset) == (2, 41)
    assert seen == [delivery]
    # When the broker acknowledged, whenever the report is handed over: sent + librdkafka's latency.
    assert delivery.acked_at == pytest.approx(time.monotonic(), abs=1.0)
    delivery.add_callback(seen.append)  # already done: called at once
    assert len(seen) == 2


def test_a_batch_counts_its_reports_and_the_offsets_acknowledged_per_partition():
    class Message:
        def __init__(self, partition, offset):
            self.at = (partition, offset)

        def partition(self):
            return self.at[0]

        def offset(self):
            return self.at[1]

    batch = LibrdkafkaBatch()
    batch.count = 5
    for partition, offset in ((0, 7), (1, 3), (0, 8), (1, 4)):
        batch._report(None, Message(partition, offset))
    assert not batch.is_done and not batch.failed()
    batch._report(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), None)
    assert batch.is_done and batch.failed()
    assert "MSG_SIZE_TOO_LARGE" in repr(batch.exception)
    assert (batch.acked, batch.spans) == (4, {0: [7, 8], 1: [3, 4]})


def test_the_resource_and_the_environment_select_the_client(monkeypatch):
    from clickstream_dagster.definitions import kafka_from_environment

    assert KafkaResource().client == "kafka-python"
    monkeypatch.setenv("KAFKA_CLIENT", "librdkafka")
    assert kafka_from_environment().client == "librdkafka"


def test_librdkafka_without_confluent_kafka_fails_saying_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "confluent_kafka", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "clickstream_dagster.librdkafka_client")
    with pytest.raises(ImportError, match=r"pip install 'clickstream-dagster\[librdkafka\]'"):
        importlib.import_module("clickstream_dagster.librdkafka_client")
    with pytest.raises(Failure, match="needs the confluent-kafka package") as failure:
        KafkaResource(client="librdkafka").publisher("t", [], transactional_id=None)
    assert failure.value.allow_retries is False
