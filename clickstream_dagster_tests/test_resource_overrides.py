"""A run config that sets some fields of a resource keeps the others as the environment set them.

The resources are built the way ``definitions.py`` builds them, from a monkeypatched environment.
End to end against a real broker: integration/test_resource_overrides.py.
"""

import pytest
from dagster import Definitions, build_resources
from dagster._core.remote_representation.external_data import RepositorySnap
from dagster_shared.serdes import serialize_value

from clickstream_dagster.definitions import defs, resources_from_environment

SECRET = "hunter2-not-for-eyes"
ENVIRONMENT = {
    "KAFKA_BOOTSTRAP_SERVERS": "broker-a:19092,broker-b:19092",
    "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "KAFKA_SASL_USERNAME": "alice",
    "KAFKA_SASL_PASSWORD": SECRET,
    "KAFKA_SSL_CAFILE": "/etc/kafka/ca.pem",
    "KAFKA_CLIENT": "librdkafka",
    "CLICKSTREAM_CSV": "/data/my-log.csv",
    "CLICKSTREAM_STORAGE_DIR": "/data/days",
}


@pytest.fixture
def environment(monkeypatch):
    for variable, value in ENVIRONMENT.items():
        monkeypatch.setenv(variable, value)
    return resources_from_environment()


def test_setting_one_field_keeps_every_other_field_of_each_resource(environment):
    run_config = {
        "kafka": {"config": {"topic_partitions": 5}},
        "clickstream_log": {"config": {"max_line_bytes": 4096}},
        "parquet_io_manager": {"config": {"storage_options": {}}},
    }
    with build_resources(environment, resource_config=run_config) as built:
        kafka, log, io_manager = built.kafka, built.clickstream_log, built.parquet_io_manager
    assert kafka.topic_partitions == 5
    assert (kafka.bootstrap_servers, kafka.security_protocol, kafka.sasl_mechanism) == (
        "broker-a:19092,broker-b:19092", "SASL_SSL", "SCRAM-SHA-512",
    )  # fmt: skip
    assert (kafka.ssl_cafile, kafka.client) == ("/etc/kafka/ca.pem", "librdkafka")
    assert (kafka.sasl_username, kafka.sasl_password) == ("alice", SECRET)  # read when the run starts
    assert (log.path, log.max_line_bytes) == ("/data/my-log.csv", 4096)
    assert io_manager.base_dir == "/data/days"


def test_a_field_the_run_sets_wins(environment):
    run_config = {"kafka": {"config": {"bootstrap_servers": "elsewhere:9093"}}}
    with build_resources(environment, resource_config=run_config) as built:
        assert built.kafka.bootstrap_servers == "elsewhere:9093"
        assert built.kafka.client == "librdkafka"


def _field_defaults(resource) -> dict:
    shape = resource.get_resource_definition().config_schema.as_field().config_type
    return {name: field.default_value for name, field in shape.fields.items() if field.default_provided}


def test_the_config_schema_defaults_are_the_environment_and_no_secret(environment):
    kafka = _field_defaults(environment["kafka"])
    assert kafka["bootstrap_servers"] == "broker-a:19092,broker-b:19092"
    assert kafka["client"] == "librdkafka" and kafka["security_protocol"] == "SASL_SSL"
    # Credentials stay EnvVars: the schema names the variable, the value is read at run start.
    assert kafka["sasl_username"] == {"env": "KAFKA_SASL_USERNAME"}
    assert kafka["sasl_password"] == {"env": "KAFKA_SASL_PASSWORD"}
    assert kafka["topic_partitions"] == 3  # not set by the environment: the class default
    assert _field_defaults(environment["clickstream_log"])["path"] == "/data/my-log.csv"
    assert _field_defaults(environment["parquet_io_manager"])["base_dir"] == "/data/days"

    # What the UI (launchpad, resource pages) is sent: the effective values, never the secret.
    snapshot = serialize_value(RepositorySnap.from_def(Definitions(assets=defs.assets, resources=environment).get_repository_def()))
    assert "broker-a:19092,broker-b:19092" in snapshot and "/data/my-log.csv" in snapshot
    assert "KAFKA_SASL_PASSWORD" in snapshot and SECRET not in snapshot
