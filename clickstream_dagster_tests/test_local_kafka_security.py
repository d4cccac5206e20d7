"""The secured local broker's pure parts: modes, ACL lists, the printed settings, the config."""

import pytest

from clickstream_dagster_tests.kafka_fixtures import load_local_kafka

lk = load_local_kafka()


def test_security_modes_are_checked_and_plaintext_stays_alone():
    assert lk.security_modes("SASL_SSL") == ("sasl_ssl",)
    assert lk.security_modes(("sasl_ssl", "ssl", "sasl_ssl")) == ("sasl_ssl", "ssl")
    with pytest.raises(lk.LocalKafkaError, match="security='tls'"):
        lk.security_modes("tls")
    with pytest.raises(lk.LocalKafkaError, match="plaintext cannot be combined"):
        lk.security_modes(("plaintext", "ssl"))


def test_at_least_once_needs_no_transactional_id_and_create_is_optional():
    exactly_once = lk.replay_acls("exactly_once", "click-data")
    at_least_once = lk.replay_acls("at_least_once", "click-data", create_topics=False)
    assert ("transactional_id", "clickstream-replay-", "prefixed", "WRITE") in exactly_once
    assert not [acl for acl in at_least_once if acl[0] == "transactional_id" or acl[3] == "CREATE"]
    assert {acl[3] for acl in at_least_once if acl[1] == "clickstream-replay-checkpoints"} == {"READ", "WRITE", "DESCRIBE"}
    assert {acl[3] for acl in at_least_once if acl[1] == "click-data"} == {"WRITE", "DESCRIBE"}


def test_the_exports_set_what_applies_and_unset_the_rest():
    text = lk.shell_exports({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9093", "KAFKA_SASL_PASSWORD": "a b'c", "KAFKA_SSL_CERTFILE": ""})
    assert text.splitlines() == [
        "export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9093",
        "export KAFKA_SASL_PASSWORD='a b'\"'\"'c'",
        "unset KAFKA_SSL_CERTFILE",
    ]


def test_only_the_ssl_listener_requires_a_client_certificate(tmp_path):
    credentials = {"broker": "b", "admin": "a", "replayer": "r"}
    ports = {"sasl_ssl": 1, "ssl": 2, "sasl_plaintext": 3}
    props = lk._security_properties(tmp_path, tuple(ports), ports, 4, credentials)
    assert props["listener.name.ssl.ssl.client.auth"] == "required"
    assert "ssl.client.auth" not in props
    assert props["listeners"] == "SASL_SSL://127.0.0.1:1,SSL://127.0.0.1:2,SASL_PLAINTEXT://127.0.0.1:3,CONTROLLER://127.0.0.1:4"
    assert props["authorizer.class.name"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    assert 'user_replayer="r"' in props["listener.name.sasl_plaintext.plain.sasl.jaas.config"]
    assert "User:admin" in props["super.users"] and "User:replayer" not in props["super.users"]
