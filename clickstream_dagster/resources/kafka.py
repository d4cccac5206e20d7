"""The Kafka cluster the replay writes to, as typed Dagster configuration."""

from dagster import ConfigurableResource, Failure
from pydantic import Field

from clickstream_dagster.kafka_client import BrokerUnavailable, KafkaPublisher, KafkaSettings, TopicUnfit, ensure_topic


class KafkaResource(ConfigurableResource):
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
    create_topic: bool = Field(default=True, description="create a missing topic (else fail)")
    topic_partitions: int = 3
    topic_replication_factor: int = 1

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
        """True if the topic was created now; a ``Failure`` naming the cluster, or the topic
        setting at fault, if unusable (see ``kafka_client.ensure_topic``)."""
        try:
            return ensure_topic(
                self.settings(),
                topic,
                partitions=self.topic_partitions,
                replication_factor=self.topic_replication_factor,
                create=self.create_topic,
                original_time_from_ms=original_time_from_ms,
                allow_retention_deletes=allow_retention_deletes,
            )
        except (BrokerUnavailable, TopicUnfit) as error:
            raise Failure(str(error), allow_retries=False) from error

    def publisher(self, topic: str, headers: list[tuple[str, bytes]]) -> KafkaPublisher:
        try:
            return KafkaPublisher(self.settings(), topic, headers)
        except BrokerUnavailable as error:
            raise Failure(str(error), allow_retries=False) from error
