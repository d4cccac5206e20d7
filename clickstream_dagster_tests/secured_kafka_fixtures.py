"""pytest plugin: a real secured Kafka broker (TLS, SASL, mutual TLS, ACLs), started only
when a test asks for it.

* ``secured_kafka`` (session): one broker from ``scripts/local_kafka.py`` with three
  listeners, SASL_SSL, SSL (client certificate required) and SASL_PLAINTEXT, Kafka's
  StandardAuthorizer, and the users of ``USERS``, each granted exactly the ACLs listed there
  (``replay_acls`` is also the README's table). Stopped at the end of the session.
* ``secured_topic`` (function): a fresh topic name the users' ACLs cover (nobody created it).
* ``client`` (param): the Kafka client library under test. Only kafka-python today; a second
  client (librdkafka) joins by adding its name to ``CLIENTS`` and a branch in the tests'
  ``client_settings``.

``KAFKA_START_TIMEOUT_S`` (default 90) bounds the broker start. ``KAFKA_SECURED_STATE_DIR``
keeps the broker in that state dir running after the session, and reuses it next time
(for iterating on these tests; stop it with ``local_kafka.py down --state-dir``).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import Iterator

import pytest

from clickstream_dagster.kafka_client import ENVIRONMENT_VARIABLES
from clickstream_dagster_tests.kafka_fixtures import _classpath_cache_dir, load_local_kafka

CLIENTS = ["kafka-python"]
TOPIC_PREFIX = "click-data"  # the users' topic ACLs are prefixed with this, as `local_kafka.py up` grants them

# Listener and SASL mechanism of each way in: (security mode, mechanism or None).
LOGINS = {
    "sasl_ssl-scram512": ("sasl_ssl", "SCRAM-SHA-512"),
    "sasl_ssl-scram256": ("sasl_ssl", "SCRAM-SHA-256"),
    "sasl_plaintext-plain": ("sasl_plaintext", "PLAIN"),
    "ssl-client-cert": ("ssl", None),
}


def _users(lk) -> dict[str, list]:
    """User -> the ACLs granted. ``replayer`` is granted by the broker start itself, as
    ``local_kafka.py up`` does: the exactly_once ACLs and reading the topic back."""
    exactly_once = lk.replay_acls("exactly_once", TOPIC_PREFIX, topic_pattern="prefixed")
    at_least_once = lk.replay_acls("at_least_once", TOPIC_PREFIX, topic_pattern="prefixed")
    read = lk.reader_acls(TOPIC_PREFIX, topic_pattern="prefixed")
    return {
        # exactly the README's ACLs for each delivery mode, nothing else
        "eo-replayer": exactly_once,
        "alo-replayer": at_least_once,
        # reads the replays back (clickstream-tail)
        "reader": read,
        # everything exactly_once needs except WRITE on the replay's topic
        "no-write": [acl for acl in exactly_once if acl[:2] != ("topic", TOPIC_PREFIX) or acl[3] != "WRITE"],
    }


@dataclass(frozen=True)
class SecuredKafka:
    broker: object  # local_kafka.Broker

    def env(self, login: str, user: str) -> dict[str, str]:
        """The KAFKA_* variables of ``user`` through ``login`` (a key of LOGINS)."""
        mode, mechanism = LOGINS[login]
        env = self.broker.client_environment(mode, user)
        if mechanism:
            env["KAFKA_SASL_MECHANISM"] = mechanism
        return env

    def resource_config(self, login: str, user: str) -> dict[str, str]:
        """KafkaResource fields for ``user`` (what definitions.kafka_from_environment reads)."""
        env = self.env(login, user)
        return {field: env[var] for field, var in ENVIRONMENT_VARIABLES.items() if env.get(var)}


@pytest.fixture(scope="session")
def secured_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredKafka]:
    lk = load_local_kafka()
    users = _users(lk)
    kept = os.environ.get("KAFKA_SECURED_STATE_DIR")
    state_dir = kept or tmp_path_factory.mktemp("kafka-secured")
    timeout_s = float(os.environ.get("KAFKA_START_TIMEOUT_S") or lk.DEFAULT_TIMEOUT_S)
    try:
        broker = lk.start_broker(
            state_dir,
            lk.free_port(),
            timeout_s=timeout_s,
            cache_dir=_classpath_cache_dir(),
            security=("sasl_ssl", "ssl", "sasl_plaintext"),
            users=tuple(users),
        )
    except lk.LocalKafkaError as exc:
        pytest.fail(f"could not start a secured local Kafka broker: {exc}", pytrace=False)
    try:
        for user, acls in users.items():
            broker.grant(user, acls)
        yield SecuredKafka(broker)
    finally:
        if not kept:
            broker.stop()


@pytest.fixture
def secured_topic() -> str:
    return f"{TOPIC_PREFIX}-secured-{uuid.uuid4().hex[:10]}"


@pytest.fixture(params=CLIENTS)
def client(request: pytest.FixtureRequest) -> str:
    return request.param
