"""The Kafka cluster the replay writes to, as typed Dagster configuration."""

from typing import Literal

from dagster import ConfigurableResource, Failure
from pydantic import Field

from clickstream_dagster.checkpoints import DEFAULT_CHECKPOINT_TOPIC, Checkpoint
from clickstream_dagster.kafka_client import (
    BrokerUnavailable,
    KafkaPublisher,
    KafkaSettings,
    ConsumerRecord,
    end_offsets,
    ensure_topic,
    read_checkpoints,
    read_committed_since,
    unreachable,
)
from clickstream_dagster.resources.built_defaults import BuiltValuesAreDefaults


# Heartbeats come every 5 s (ReplayTiming.heartbeat_s): twice that, plus a stall's bound, is a dead replay.
LEASE_MARGIN_S = 10.0


class KafkaResource(BuiltValuesAreDefaults, ConfigurableResource):
    """Connection and security settings of a Kafka cluster.

    ``definitions.py`` fills these from ``KAFKA_*`` environment variables; the password
    only ever comes through ``EnvVar`` and is never logged or put in metadata.
    """

    bootstrap_servers: str = Field(default="localhost:9092", description="host:port[,host:port...]")
    client_id: str = "clickstream-dagster"
    security_protocol: str = Field(default="PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
    sasl_mechanism: str | None = Field(default=None, description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: str | None = Field(default=None, description="CA bundle (PEM) to verify the brokers")
    ssl_certfile: str | None = Field(default=None, description="client certificate (PEM), for mutual TLS")
    ssl_keyfile: str | None = Field(default=None, description="client private key (PEM), for mutual TLS")
    connect_timeout_s: float = Field(default=30.0, description="an unreachable cluster fails the run after this")
    delivery_timeout_s: float = Field(
        default=30.0, gt=0, description="a message or commit not confirmed this long after it was sent fails the run"
    )
    checkpoint_topic: str = Field(
        default=DEFAULT_CHECKPOINT_TOPIC,
        description="compacted topic holding each replay's checkpoint (committed with its messages) and lease",
    )
    create_topic: bool = Field(default=True, description="create a missing topic (else fail)")
    topic_partitions: int = 3
    topic_replication_factor: int = 1
    client: Literal["kafka-python", "librdkafka"] = Field(
        default="kafka-python",
        description="the replay's producer library: kafka-python, or librdkafka (confluent-kafka, the "
        "[librdkafka] extra) for max-paced replays at the broker's speed; same guarantees",
    )

    @property
    def lease_s(self) -> float:
        """A replay not heard of for this long holds its topic no more: it commits at least
        every few seconds, and one that cannot fails within delivery_timeout_s."""
        return self.delivery_timeout_s + LEASE_MARGIN_S

    @property
    def close_timeout_s(self) -> float:
        return min(self.delivery_timeout_s, 5.0)

    def settings(self) -> KafkaSettings:
        try:
            return KafkaSettings(
                bootstrap_servers=self.bootstrap_servers,
                client_id=self.client_id,
                security_protocol=self.security_protocol,
                sasl_mechanism=self.sasl_mechanism,
                sasl_username=self.sasl_username,
                sasl_password=self.sasl_password,
                ssl_cafile=self.ssl_cafile,
                ssl_certfile=self.ssl_certfile,
                ssl_keyfile=self.ssl_keyfile,
                connect_timeout_s=self.connect_timeout_s,
            )
        except ValueError as error:
            raise Failure(f"kafka resource: {error}", allow_retries=False) from error

    def ensure_topic(
        self, topic: str, original_time_from_ms: int | None = None, allow_retention_deletes: bool = False
    ) -> bool:
        """True if the topic was created now (the checkpoint topic too, compacted, if missing);
        ``BrokerUnavailable`` naming the cluster if unusable, ``TopicUnfit`` naming the topic
        setting at fault (see ``kafka_client.ensure_topic``)."""
        settings = self.settings()
        ensure_topic(
            settings,
            self.checkpoint_topic,
            partitions=1,
            replication_factor=self.topic_replication_factor,
            create=self.create_topic,
            topic_configs={"cleanup.policy": "compact"},
        )
        return ensure_topic(
            settings,
            topic,
            partitions=self.topic_partitions,
            replication_factor=self.topic_replication_factor,
            create=self.create_topic,
            original_time_from_ms=original_time_from_ms,
            allow_retention_deletes=allow_retention_deletes,
        )

    def end_offsets(self, topic: str) -> dict[int, int]:
        return end_offsets(self.settings(), topic)

    def unreachable(self, topic: str, timeout_s: float) -> BrokerUnavailable | None:
        """None if the cluster answers about ``topic`` within ``timeout_s`` (at least 1 s), else why not."""
        return unreachable(self.settings(), topic, max(round(timeout_s, 1), 1.0))

    def read_back(self, topic: str, start_offsets: dict[int, int]) -> list[ConsumerRecord]:
        """What a read_committed consumer finds in ``topic`` from ``start_offsets`` on."""
        return read_committed_since(self.settings(), topic, start_offsets)

    @property
    def open_transaction_bound_s(self) -> float:
        """How long a transaction left open by a dead producer can last: the producers'
        transaction timeout (at least 60 s), plus the broker's 10 s sweep for expired ones."""
        return max(self.delivery_timeout_s, 60.0) + 15.0

    def checkpoints(self, complete_within_s: float | None = None) -> list[Checkpoint]:
        """Every replay's latest committed checkpoint (read_committed). ``complete_within_s``:
        raise ``CheckpointsIncomplete`` rather than return an incomplete view after that long."""
        return read_checkpoints(self.settings(), self.checkpoint_topic, complete_within_s)

    def publisher(
        self, topic: str, headers: list[tuple[str, bytes]], transactional_id: str | None
    ) -> KafkaPublisher:
        """A producer for ``topic``; with a transactional id it fences earlier ones at once."""
        publisher_class = KafkaPublisher
        if self.client == "librdkafka":
            try:
                from clickstream_dagster.librdkafka_client import LibrdkafkaPublisher
            except ImportError as error:
                raise Failure(f"kafka resource: {error}", allow_retries=False) from error
            publisher_class = LibrdkafkaPublisher
        return publisher_class(
            self.settings(),
            topic,
            headers,
            checkpoint_topic=self.checkpoint_topic,
            transactional_id=transactional_id,
            delivery_timeout_s=self.delivery_timeout_s,
        )
