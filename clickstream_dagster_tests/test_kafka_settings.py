"""Kafka connection settings: validation that names the setting, and secrets kept out of sight."""

import pytest
from dagster import Failure
from kafka.errors import KafkaTimeoutError, TopicAuthorizationFailedError, TransactionalIdAuthorizationFailedError

from clickstream_dagster.kafka_client import KafkaSettings, producer_config
from clickstream_dagster.resources.kafka import KafkaResource


def test_plaintext_config_has_bounded_timeouts():
    config = KafkaSettings("a:9092, b:9092", connect_timeout_s=7).client_config()
    assert config["bootstrap_servers"] == ["a:9092", "b:9092"]
    assert config["bootstrap_timeout_ms"] == 7000
    assert "sasl_plain_password" not in config


def test_the_producer_waits_for_a_request_as_long_as_the_delivery_bound():
    """A broker pausing for less than delivery_timeout_s must not fail the replay (it did at 15 s,
    half the bound, when requests timed out first); connecting stays bounded by connect_timeout_s."""
    config = producer_config(KafkaSettings("b:9092", connect_timeout_s=7), "clickstream-replay-t", delivery_timeout_s=30)
    assert config["request_timeout_ms"] == config["max_block_ms"] == 30_000
    assert config["delivery_timeout_ms"] > config["request_timeout_ms"] + config["linger_ms"]  # kafka-python's rule
    assert config["bootstrap_timeout_ms"] == 7000
    assert (config["acks"], config["enable_idempotence"], config["transactional_id"]) == ("all", True, "clickstream-replay-t")


def test_sasl_ssl_config_carries_credentials_and_files():
    settings = KafkaSettings(
        "b:9093", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
        sasl_username="u", sasl_password="s3cret", ssl_cafile="/ca.pem",
    )
    config = settings.client_config()
    assert (config["sasl_mechanism"], config["sasl_plain_username"], config["sasl_plain_password"]) == ("SCRAM-SHA-512", "u", "s3cret")
    assert config["ssl_cafile"] == "/ca.pem"
    assert "s3cret" not in repr(settings)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"security_protocol": "TLS"}, "security_protocol='TLS'"),
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "GSSAPI", "sasl_username": "u", "sasl_password": "p"}, "sasl_mechanism='GSSAPI'"),
        ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN"}, "needs sasl_username and sasl_password"),
        ({"connect_timeout_s": 0}, "connect_timeout_s=0"),
    ],
)
def test_bad_settings_are_refused_naming_the_setting(kwargs, named):
    with pytest.raises(ValueError, match=named):
        KafkaSettings("b:9092", **kwargs)


def test_the_resource_turns_bad_settings_into_a_final_failure():
    with pytest.raises(Failure, match="security_protocol='TLS'") as failure:
        KafkaResource(security_protocol="TLS").settings()
    assert failure.value.allow_retries is False


def test_an_unavailable_error_names_the_servers_and_hides_the_password():
    settings = KafkaSettings("b:9093", security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", sasl_username="u", sasl_password="s3cret")
    message = str(settings.unavailable("connecting", TimeoutError("timed out")))
    assert message.startswith("Kafka at b:9093 (SASL_PLAINTEXT): connecting failed within 30 s")
    assert "s3cret" not in message


def test_the_deployment_reads_kafka_settings_and_credentials_from_the_environment(monkeypatch):
    from dagster import EnvVar

    from clickstream_dagster.definitions import kafka_from_environment

    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "b1:9093,b2:9093")
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "SCRAM-SHA-256")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "s3cret")
    resource = kafka_from_environment()
    assert (resource.bootstrap_servers, resource.security_protocol) == ("b1:9093,b2:9093", "SASL_SSL")
    # The credentials stay references to the variables, resolved only when a run starts.
    assert resource.sasl_password == EnvVar("KAFKA_SASL_PASSWORD")
    assert resource.sasl_username == EnvVar("KAFKA_SASL_USERNAME")


def test_without_variables_the_deployment_uses_a_local_plaintext_broker(monkeypatch):
    from clickstream_dagster.definitions import kafka_from_environment

    for variable in ("KAFKA_BOOTSTRAP_SERVERS", "KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_PASSWORD"):
        monkeypatch.delenv(variable, raising=False)
    resource = kafka_from_environment()
    assert (resource.bootstrap_servers, resource.security_protocol, resource.sasl_password) == ("localhost:9092", "PLAINTEXT", None)


@pytest.mark.parametrize(
    ("error", "named"),
    [
        (TransactionalIdAuthorizationFailedError(), "WRITE and DESCRIBE on TransactionalId prefix 'clickstream-replay-'"),
        (TopicAuthorizationFailedError({"click-data"}), "WRITE (and DESCRIBE) on the topic"),
    ],
)
def test_an_authorization_error_names_the_principal_and_the_missing_permission(error, named):
    settings = KafkaSettings("b:9093", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="u", sasl_password="s3cret")
    message = str(settings.unavailable("starting the producer", error))
    assert "user 'u' (SCRAM-SHA-512) is not authorized" in message and named in message
    assert "within" not in message  # refused, not timed out
    assert "s3cret" not in message


def test_a_plaintext_timeout_is_not_diagnosed_as_a_login_problem(local_kafka):
    # Nothing listens there: no login to diagnose, the timeout stays the reason.
    dead = f"127.0.0.1:{local_kafka.free_port()}"
    settings = KafkaSettings(dead, security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", sasl_username="u", sasl_password="p")
    assert settings.explain(KafkaTimeoutError("Unable to bootstrap")) == "KafkaTimeoutError: Unable to bootstrap"
    settings.check_login()  # does not raise: an unreachable cluster is the clients' timeout to report
