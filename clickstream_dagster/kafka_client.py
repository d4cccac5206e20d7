"""kafka-python behind the replay's ``Publisher`` protocol, with bounded waits everywhere.

No Dagster here: ``resources/kafka.py`` builds ``KafkaSettings`` from typed config.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.errors import InvalidTopicError, KafkaError, KafkaTimeoutError, TopicAlreadyExistsError

from clickstream_dagster.topics import ORIGINAL_TIME_SETTINGS, ORIGINAL_TIME_TOPIC_CONFIGS, original_time_problems

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


# KafkaSettings field <- the environment variable that sets it, in every deployment.
ENVIRONMENT_VARIABLES = {
    "bootstrap_servers": "KAFKA_BOOTSTRAP_SERVERS",
    "security_protocol": "KAFKA_SECURITY_PROTOCOL",
    "sasl_mechanism": "KAFKA_SASL_MECHANISM",
    "sasl_username": "KAFKA_SASL_USERNAME",
    "sasl_password": "KAFKA_SASL_PASSWORD",
    "ssl_cafile": "KAFKA_SSL_CAFILE",
    "ssl_certfile": "KAFKA_SSL_CERTFILE",
    "ssl_keyfile": "KAFKA_SSL_KEYFILE",
}
CREDENTIAL_FIELDS = ("sasl_username", "sasl_password")


class BrokerUnavailable(RuntimeError):
    """The cluster could not be reached or used; the message names the bootstrap servers."""


class TopicUnfit(RuntimeError):
    """The topic cannot take this replay as configured; the message names the setting and the fix."""


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap_servers: str
    client_id: str = "clickstream-dagster"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)  # never printed
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    connect_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.security_protocol not in SECURITY_PROTOCOLS:
            raise ValueError(f"security_protocol={self.security_protocol!r}: expected one of {SECURITY_PROTOCOLS}")
        if self.security_protocol.startswith("SASL"):
            if self.sasl_mechanism not in SASL_MECHANISMS:
                raise ValueError(
                    f"sasl_mechanism={self.sasl_mechanism!r}: {self.security_protocol} needs one of {SASL_MECHANISMS}"
                )
            if not self.sasl_username or not self.sasl_password:
                raise ValueError(f"{self.security_protocol} needs sasl_username and sasl_password")
        if not self.connect_timeout_s > 0:
            raise ValueError(f"connect_timeout_s={self.connect_timeout_s!r}: expected > 0")

    def client_config(self) -> dict:
        """Keyword arguments shared by kafka-python's producer, consumer and admin client."""
        timeout_ms = int(self.connect_timeout_s * 1000)
        config = {
            "bootstrap_servers": [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()],
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
            # Without these, a dead broker blocks the first call for kafka-python's own 30-60 s.
            "bootstrap_timeout_ms": timeout_ms,
            "request_timeout_ms": max(timeout_ms, 1000),
        }
        if self.security_protocol.startswith("SASL"):
            config |= {
                "sasl_mechanism": self.sasl_mechanism,
                "sasl_plain_username": self.sasl_username,
                "sasl_plain_password": self.sasl_password,
            }
        for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            if getattr(self, key):
                config[key] = getattr(self, key)
        return config

    def unavailable(self, doing: str, error: BaseException) -> BrokerUnavailable:
        reason = str(error) if str(error).startswith(type(error).__name__) else f"{type(error).__name__}: {error}"
        return BrokerUnavailable(
            f"Kafka at {self.bootstrap_servers} ({self.security_protocol}): {doing} failed "
            f"within {self.connect_timeout_s:g} s: {reason}"
        )


def ensure_topic(
    settings: KafkaSettings,
    topic: str,
    *,
    partitions: int,
    replication_factor: int,
    create: bool,
    original_time_from_ms: int | None = None,
    allow_retention_deletes: bool = False,
) -> bool:
    """Make sure ``topic`` exists; returns True if it was created now.

    With ``create=False`` a missing topic is an error, for clusters where the
    replay's principal may not create topics.

    ``original_time_from_ms``: the records will carry their original timestamps, the
    oldest this one. A topic created now gets no time-based retention; the topic's
    settings are then read, and ``TopicUnfit`` raised, before anything is sent, if it
    would refuse, restamp or (unless ``allow_retention_deletes``) delete such records.
    """
    try:
        admin = KafkaAdminClient(**settings.client_config())
    except (KafkaError, OSError) as error:
        raise settings.unavailable("connecting", error) from error
    try:
        created = _create_topic(admin, settings, topic, partitions, replication_factor, create, original_time_from_ms)
        if original_time_from_ms is not None:
            found = admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, topic, dict.fromkeys(ORIGINAL_TIME_SETTINGS))],
                config_filter="all",
            )
            topic_settings = {name: c["value"] for name, c in found["topic"].get(topic, {}).items()}
            if "retention.ms" not in topic_settings:  # never absent from a topic Kafka describes
                raise TopicUnfit(
                    f"record_timestamp=original: could not read the settings of topic {topic!r} on Kafka at "
                    f"{settings.bootstrap_servers}, so cannot tell whether it keeps 2012 timestamps"
                )
            problems = original_time_problems(
                topic, topic_settings, original_time_from_ms, int(time.time() * 1000),
                allow_retention_deletes=allow_retention_deletes, bootstrap_servers=settings.bootstrap_servers,
            )
            if problems:
                raise TopicUnfit("record_timestamp=original: " + "; ".join(problems))
        return created
    except KafkaError as error:
        raise settings.unavailable(f"preparing topic {topic!r}", error) from error
    finally:
        admin.close()


def _create_topic(
    admin: KafkaAdminClient,
    settings: KafkaSettings,
    topic: str,
    partitions: int,
    replication_factor: int,
    create: bool,
    original_time_from_ms: int | None,
) -> bool:
    if topic in admin.list_topics():
        return False
    if not create:
        raise BrokerUnavailable(
            f"topic {topic!r} does not exist on Kafka at {settings.bootstrap_servers} and create_topic is off"
        )
    configs = ORIGINAL_TIME_TOPIC_CONFIGS if original_time_from_ms is not None else {}
    try:
        admin.create_topics(
            {topic: {"num_partitions": partitions, "replication_factor": replication_factor, "configs": configs}},
            timeout_ms=int(settings.connect_timeout_s * 1000),
            wait_for_metadata=True,
        )
    except TopicAlreadyExistsError:
        return False  # created concurrently by someone else: fine
    except InvalidTopicError as error:  # e.g. its name collides with another's ('.' vs '_')
        reason = re.search(r'error_message="([^"]+)"', str(error))
        raise TopicUnfit(
            f"Kafka at {settings.bootstrap_servers} refused to create topic {topic!r}: "
            f"{reason.group(1) if reason else error}"
        ) from error
    return True


class KafkaPublisher:
    """A ``Publisher`` for one topic: idempotent, acks=all, a header set on every message."""

    def __init__(self, settings: KafkaSettings, topic: str, headers: list[tuple[str, bytes]], **producer_options):
        self.settings, self.topic, self.headers = settings, topic, headers
        options = {
            "acks": "all",
            "enable_idempotence": True,
            # Bounded: a broker that vanishes mid-replay fails the run instead of blocking it.
            "max_block_ms": int(settings.connect_timeout_s * 1000),
            "delivery_timeout_ms": max(int(settings.connect_timeout_s * 1000) * 2, 5000),
            "linger_ms": 5,
        } | producer_options
        try:
            self.producer = KafkaProducer(**settings.client_config(), **options)
            # Fetch the topic's metadata now, so the first send does not block on it and
            # start the replay's schedule late.
            self.producer.partitions_for(topic)
        except (KafkaError, OSError) as error:
            raise settings.unavailable("connecting the producer", error) from error

    def send(self, key: bytes, value: bytes, timestamp_ms: int | None):
        try:
            return self.producer.send(self.topic, value=value, key=key, headers=self.headers, timestamp_ms=timestamp_ms)
        except KafkaTimeoutError as error:
            raise self.settings.unavailable(f"sending to {self.topic!r}", error) from error

    def flush(self, timeout_s: float) -> None:
        try:
            self.producer.flush(timeout=timeout_s)
        except KafkaTimeoutError as error:
            raise self.settings.unavailable(f"flushing to {self.topic!r}", error) from error

    def close(self, timeout_s: float = 5.0) -> None:
        self.producer.close(timeout=timeout_s)
