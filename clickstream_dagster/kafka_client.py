"""kafka-python behind the replay's ``Publisher`` protocol, with bounded waits everywhere.

No Dagster here: ``resources/kafka.py`` builds ``KafkaSettings`` from typed config.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from dataclasses import dataclass, field, replace

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka import __version__ as kafka_version
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import (
    AuthorizationError,
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    IllegalStateError,
    InvalidProducerEpochError,
    InvalidTopicError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    ProducerFencedError,
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailedError,
)

from clickstream_dagster import kafka_python_internals as internals
from clickstream_dagster.checkpoints import TRANSACTIONAL_ID_PREFIX, Checkpoint
from clickstream_dagster.kafka_login import login_problem
from clickstream_dagster.replay import CommitInDoubt, DeliveryError, ProducerFenced
from clickstream_dagster.topics import ORIGINAL_TIME_SETTINGS, ORIGINAL_TIME_TOPIC_CONFIGS, original_time_problems

# The name the unit test of the failed-batch rule imports it by.
_abort_on_any_failed_batch = internals.abort_on_any_failed_batch

log = logging.getLogger(__name__)

# How kafka-python's refusal of a send names the state it is in while it bumps the producer
# epoch ("Cannot call send in state BUMPING_PRODUCER_EPOCH").
EPOCH_BUMP_STATE = "BUMPING_PRODUCER_EPOCH"

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
# The producer library, a setting of the Kafka resource rather than of the connection.
CLIENT_VARIABLE = "KAFKA_CLIENT"
CLIENTS = ("kafka-python", "librdkafka")
CREDENTIAL_FIELDS = ("sasl_username", "sasl_password")


class BrokerUnavailable(RuntimeError):
    """The cluster could not be reached or used; the message names the bootstrap servers."""


class TopicUnfit(RuntimeError):
    """The topic cannot take this replay as configured; the message names the setting and the fix."""


class NotAuthorized(DeliveryError):
    """The cluster refused this principal an operation (a missing ACL): retrying cannot help."""


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

    @property
    def principal(self) -> str:
        """Who the cluster sees, as far as this client can tell (for messages; no secret)."""
        if self.security_protocol.startswith("SASL"):
            return f"user {self.sasl_username!r} ({self.sasl_mechanism})"
        if self.ssl_certfile:
            return f"the client certificate {self.ssl_certfile}"
        return "this client (no credentials)"

    def check_login(self) -> None:
        """Fail at once, saying why, when the cluster refuses these credentials or this TLS
        setup; a cluster that cannot be reached is left to the clients' own bounded wait."""
        problem = login_problem(self)
        if problem is not None:
            raise BrokerUnavailable(f"Kafka at {self.bootstrap_servers} ({self.security_protocol}): {problem}")

    def explain(self, error: BaseException) -> str:
        """The cause of a client error for a person: the missing permission, the failed login."""
        refused = _authorization_error(error)
        if refused is not None:
            return f"{self.principal} is not authorized: {_missing_permission(refused)} ({_error_text(refused)})"
        if isinstance(error, KafkaTimeoutError | KafkaConnectionError) and self.security_protocol != "PLAINTEXT":
            # kafka-python retries refused logins until its timeout and then reports none of them.
            problem = login_problem(self)
            if problem is not None:
                return problem
        return _error_text(error)

    def not_authorized(self, error: BaseException, doing: str | None = None) -> NotAuthorized | None:
        """``error`` (or its cause) as a ``NotAuthorized`` naming the missing ACL; None if it is
        not an authorization failure."""
        if _authorization_error(error) is None:
            return None
        return NotAuthorized(f"Kafka at {self.bootstrap_servers}: {doing or 'a request'} failed: {self.explain(error)}")

    def unavailable(self, doing: str, error: BaseException) -> BrokerUnavailable:
        reason = self.explain(error)
        if _authorization_error(error) is not None:
            return BrokerUnavailable(f"Kafka at {self.bootstrap_servers} ({self.security_protocol}): {doing} failed: {reason}")
        return BrokerUnavailable(
            f"Kafka at {self.bootstrap_servers} ({self.security_protocol}): {doing} failed "
            f"within {self.connect_timeout_s:g} s: {reason}"
        )


def _authorization_error(error: BaseException | None) -> AuthorizationError | None:
    """The authorization failure behind ``error``: itself, an argument (kafka-python wraps a
    transaction's first error in a plain KafkaError) or a cause."""
    seen = 0
    while error is not None and seen < 5:
        if isinstance(error, AuthorizationError):
            return error
        for arg in getattr(error, "args", ()):
            if isinstance(arg, AuthorizationError):
                return arg
        error, seen = error.__cause__, seen + 1
    return None


def _error_text(error: BaseException) -> str:
    return str(error) if str(error).startswith(type(error).__name__) else f"{type(error).__name__}: {error}"


def _missing_permission(error: AuthorizationError) -> str:
    """The ACL to grant, by the kind of resource Kafka refused (README: Secured clusters)."""
    if isinstance(error, TransactionalIdAuthorizationFailedError):
        return (
            f"it needs WRITE and DESCRIBE on TransactionalId prefix {TRANSACTIONAL_ID_PREFIX!r} for delivery "
            "exactly_once (or replay with delivery at_least_once, which uses no transactional id)"
        )
    if isinstance(error, TopicAuthorizationFailedError):
        return (
            "it needs WRITE (and DESCRIBE) on the topic to replay into it, READ (and DESCRIBE) to read it, "
            "CREATE to create it"
        )
    if isinstance(error, ClusterAuthorizationFailedError):
        return "it needs an ACL on the cluster resource (IDEMPOTENT_WRITE for idempotent sends before Kafka 3.0)"
    if isinstance(error, GroupAuthorizationFailedError):
        return "it needs READ on the consumer group"
    return "an ACL is missing"


def ensure_topic(
    settings: KafkaSettings,
    topic: str,
    *,
    partitions: int,
    replication_factor: int,
    create: bool,
    topic_configs: dict[str, str] | None = None,
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
    settings.check_login()  # a refused login fails now, saying why, not after connect_timeout_s
    try:
        admin = KafkaAdminClient(**settings.client_config())
    except (KafkaError, OSError) as error:
        raise settings.unavailable("connecting", error) from error
    try:
        if original_time_from_ms is not None:
            topic_configs = {**(topic_configs or {}), **ORIGINAL_TIME_TOPIC_CONFIGS}
        created = _create_topic(admin, settings, topic, partitions, replication_factor, create, topic_configs)
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
    topic_configs: dict[str, str] | None,
) -> bool:
    if topic in admin.list_topics():
        return False
    if not create:
        raise BrokerUnavailable(
            f"topic {topic!r} does not exist on Kafka at {settings.bootstrap_servers} and create_topic is off"
        )
    try:
        admin.create_topics(
            {
                topic: {
                    "num_partitions": partitions,
                    "replication_factor": replication_factor,
                    "configs": topic_configs or {},
                }
            },
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


def producer_config(settings: KafkaSettings, transactional_id: str | None, delivery_timeout_s: float) -> dict:
    """kafka-python's producer settings for a replay: idempotent, acks=all, every wait bounded."""
    timeout_ms = int(delivery_timeout_s * 1000)
    request_timeout_ms, linger_ms = max(timeout_ms, 1000), 5
    return settings.client_config() | {
        # A request (a send, a commit) may wait as long as delivery_timeout_s: a broker pausing for
        # less than that delays the replay but does not fail it (connect_timeout_s bounds connecting).
        "request_timeout_ms": request_timeout_ms,
        "acks": "all",
        "enable_idempotence": True,
        "transactional_id": transactional_id,
        # Bounded: a broker that stops answering fails the replay instead of blocking it.
        "max_block_ms": timeout_ms,
        # kafka-python wants it above linger + request timeout; the replay's own clock fails a
        # message not acknowledged delivery_timeout_s after it was due in any case.
        "delivery_timeout_ms": request_timeout_ms + linger_ms + 1,
        "linger_ms": linger_ms,
        # The coordinator answers CONCURRENT_TRANSACTIONS until the previous markers are
        # written; the default 100 ms backoff makes every commit take ~110 ms, 5 ms ~9 ms.
        "retry_backoff_ms": 5,
    }


class KafkaPublisher:
    """A ``Publisher`` for one topic: idempotent, acks=all, a header set on every message.

    With a ``transactional_id`` (exactly_once) every message is sent inside a transaction that
    also writes the replay's checkpoint, and creating the publisher fences every earlier
    producer with that id: a zombie of an earlier attempt can no longer write.

    Transactions take kafka-python's fast path (``kafka_python_internals``) when the installed
    kafka-python has all it relies on, else its public API alone (``fast_path`` False; both
    exactly once, the public one slower). ``fast_path``: None lets the probe and
    ``KAFKA_PYTHON_FAST_PATH`` decide, False asks for the public API, True requires the fast path.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        topic: str,
        headers: list[tuple[str, bytes]],
        *,
        checkpoint_topic: str,
        transactional_id: str | None = None,
        delivery_timeout_s: float = 30.0,
        fast_path: bool | None = None,
        **producer_options,
    ):
        self.settings, self.topic, self.headers = settings, topic, headers
        self.checkpoint_topic = checkpoint_topic
        self.delivery_timeout_s = delivery_timeout_s
        self.transactional = transactional_id is not None
        self._committing = None  # the result of the last commit begun (see resolve_commit)
        if fast_path and internals.FAST_PATH_MISSING:
            raise RuntimeError(
                f"the kafka-python fast path needs what kafka-python {kafka_version} lacks: "
                f"{', '.join(internals.FAST_PATH_MISSING)}"
            )
        self.fast_path = internals.fast_path_wanted() if fast_path is None else fast_path
        if fast_path is None and self.transactional and internals.FAST_PATH_MISSING:
            log.warning(
                "kafka-python %s: transactions through its public API only (slower), it lacks %s",
                kafka_version, ", ".join(internals.FAST_PATH_MISSING),
            )
        # Public API only: the sends of the open transaction, all checked before it commits
        # (kafka-python would commit over a batch that expired), and whether it is begun.
        self._in_transaction: list = []
        self._transaction_begun = False
        try:
            self.producer = KafkaProducer(**producer_config(settings, transactional_id, delivery_timeout_s) | producer_options)
            # Fetch the topics' metadata now, so the first send does not block on it and
            # start the replay's schedule late.
            self.producer.partitions_for(topic)
            self.producer.partitions_for(checkpoint_topic)
            if self.transactional:
                if self.fast_path and (missing := internals.producer_missing(self.producer)):
                    if fast_path:
                        self.producer.close(timeout=0)
                        raise RuntimeError(f"the kafka-python fast path needs what this producer lacks: {', '.join(missing)}")
                    log.warning(
                        "kafka-python %s: transactions through its public API only (slower), the producer lacks %s",
                        kafka_version, ", ".join(missing),
                    )
                    self.fast_path = False
                if self.fast_path:
                    internals.check_partitions_once_per_transaction(self.producer)
                    internals.abort_on_any_failed_batch(internals.transaction_manager(self.producer))
                self.producer.init_transactions()
                self._begin_transaction()
        except (KafkaError, OSError) as error:
            if hasattr(self, "producer"):
                self.producer.close(timeout=0)
            raise settings.unavailable("starting the producer", error) from error

    def send(self, key: bytes, value: bytes, timestamp_ms: int | None):
        deadline = None  # only when a send is refused: the hot path reads no clock
        while True:
            try:
                delivery = self.producer.send(self.topic, value=value, key=key, headers=self.headers, timestamp_ms=timestamp_ms)
                break
            except IllegalStateError as error:
                # After a batch fails with a producer-state error, kafka-python bumps the epoch
                # (KIP-360) and refuses sends meanwhile; what the bump finds decides (a zombie
                # learns it was fenced), so wait for it, within the delivery timeout.
                deadline = deadline or time.monotonic() + self.delivery_timeout_s
                if EPOCH_BUMP_STATE not in str(error) or time.monotonic() >= deadline:
                    raise self._delivery_error(f"sending to {self.topic!r}", error) from error
                time.sleep(0.02)
            except KafkaError as error:
                raise self._delivery_error(f"sending to {self.topic!r}", error) from error
        if self.transactional and not self.fast_path:
            self._in_transaction.append(delivery)
        return delivery

    def commit(self, checkpoint_key: bytes, checkpoint_value: bytes, timeout_s: float) -> None:
        self._committing = None
        try:
            checkpoint = self.producer.send(self.checkpoint_topic, key=checkpoint_key, value=checkpoint_value)
            if not self.transactional:
                return
            deadline = time.monotonic() + timeout_s
            if self.fast_path:
                # KafkaProducer.commit_transaction() waits without a bound; its own result object
                # (the same call, minus the unbounded wait) is bounded here.
                result = self._committing = internals.begin_commit(self.producer)
            else:
                self._in_transaction.append(checkpoint)
                result = self._commit_through_public_api(timeout_s)
            # The public API's flush took its share of timeout_s: the whole commit stays within it.
            if not result.wait(timeout_ms=max(int((deadline - time.monotonic()) * 1000), 0)):
                raise self._commit_not_confirmed(timeout_s)
            if result.failed:  # a batch of the transaction failed: nothing of it was committed
                raise result.exception
            self._begin_transaction()
        except KafkaError as error:
            raise self._delivery_error(f"committing to {self.topic!r}", error) from error

    def _commit_through_public_api(self, timeout_s: float) -> InThread:
        """Begin the commit once every send of the transaction succeeded: kafka-python's public
        ``commit_transaction`` would commit over a batch that expired (see
        ``kafka_python_internals.abort_on_any_failed_batch``), leaving a hole. Raises the first
        failure, and the transaction stays open for ``abort``; returns the commit under way."""
        try:
            self.producer.flush(timeout=timeout_s)
        except KafkaTimeoutError:
            # A silent broker: as on the fast path, whose commit waits for these sends first.
            raise self._commit_not_confirmed(timeout_s) from None
        for delivery in self._in_transaction:
            if not delivery.is_done:
                raise self._commit_not_confirmed(timeout_s)
            if delivery.failed():
                raise delivery.exception
        self._transaction_begun = False
        # commit_transaction waits without a bound: in its own thread, the wait here is bounded.
        # Recorded before it starts, so that an interrupt cannot fall between the two.
        self._committing = commit = InThread(self.producer.commit_transaction, "kafka-python commit")
        commit.start()
        return commit

    def _commit_not_confirmed(self, timeout_s: float) -> CommitInDoubt:
        return CommitInDoubt(
            f"Kafka at {self.settings.bootstrap_servers} did not confirm a commit to {self.topic!r} "
            f"within {timeout_s:g} s (delivery_timeout_s)"
        )

    def _begin_transaction(self) -> None:
        self.producer.begin_transaction()
        self._in_transaction.clear()
        self._transaction_begun = True

    def resolve_commit(self, timeout_s: float) -> bool:
        result = self._committing
        if result is None:  # interrupted before the commit began: the transaction is still open
            return False
        try:
            if not result.wait(timeout_ms=int(timeout_s * 1000)):
                raise CommitInDoubt(f"Kafka at {self.settings.bootstrap_servers} did not confirm an interrupted commit within {timeout_s:g} s")
            if result.failed:
                return False
            if internals.next_transaction_not_begun(self.producer) if self.fast_path else not self._transaction_begun:
                self._begin_transaction()  # interrupted before the next transaction began
            return True
        except KafkaError as error:
            raise self._delivery_error(f"committing to {self.topic!r}", error) from error

    def flush(self, timeout_s: float) -> None:
        try:
            self.producer.flush(timeout=timeout_s)
        except KafkaError as error:
            raise self._delivery_error(f"flushing to {self.topic!r}", error) from error

    def abort(self, timeout_s: float) -> None:
        """Drop the open transaction (bounded), and begin the next one."""
        if not self.transactional:
            return
        try:
            if self.fast_path:
                result = internals.begin_abort(self.producer)
            else:  # abort_transaction waits without a bound: in its own thread
                self._transaction_begun = False
                result = InThread(self.producer.abort_transaction, "kafka-python abort")
                result.start()
            if not result.wait(timeout_ms=int(timeout_s * 1000)):
                raise DeliveryError(f"Kafka at {self.settings.bootstrap_servers} did not confirm an abort within {timeout_s:g} s")
            self._begin_transaction()
        except KafkaError as error:
            raise self._delivery_error(f"aborting a transaction on {self.topic!r}", error) from error

    def close(self, timeout_s: float = 5.0) -> None:
        """Best effort and bounded: never raises, so it never hides the error that led here."""
        try:
            self.producer.close(timeout=timeout_s)
        except Exception:  # noqa: BLE001 - closing must not mask the replay's own outcome
            pass

    def _delivery_error(self, doing: str, error: KafkaError) -> DeliveryError:
        # A producer that learnt it was fenced refuses later sends with a plain KafkaError
        # carrying the fencing error as its second argument.
        if any(isinstance(e, ProducerFencedError | InvalidProducerEpochError) for e in (error, *error.args)):
            return ProducerFenced(
                f"{doing}: fenced by a newer producer with transactional id "
                f"{self.producer.config['transactional_id']!r} (another attempt of this replay took over)"
            )
        if (refused := self.settings.not_authorized(error, doing)) is not None:
            return refused
        if isinstance(error, KafkaTimeoutError):
            return DeliveryError(f"Kafka at {self.settings.bootstrap_servers}: {doing} timed out: {error}")
        return DeliveryError(f"Kafka at {self.settings.bootstrap_servers}: {doing} failed: {self.settings.explain(error)}")


class InThread:
    """A call that waits without a bound (kafka-python's ``commit_transaction``,
    ``abort_transaction``) run in its own thread, so that the caller's wait has one; shaped
    like kafka-python's result of a commit: ``wait(timeout_ms)`` (raises the call's error),
    ``failed``, ``exception``. A call that never returns leaves its (daemon) thread waiting."""

    def __init__(self, call, name: str):
        self._done = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(call,), name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self, call) -> None:
        try:
            call()
        except BaseException as error:  # noqa: BLE001 - handed to the waiting caller
            self._error = error
        finally:
            self._done.set()

    def wait(self, timeout_ms: int | None = None) -> bool:
        done = self._done.wait(None if timeout_ms is None else timeout_ms / 1000)
        if self._error is not None:
            raise self._error
        return done

    @property
    def failed(self) -> bool:
        return self._done.is_set() and self._error is not None

    @property
    def exception(self) -> BaseException | None:
        return self._error


def _consumer(settings: KafkaSettings) -> KafkaConsumer:
    """A read_committed consumer with no group: nothing to authorize beyond READ on the topic."""
    try:
        return KafkaConsumer(**settings.client_config(), isolation_level="read_committed", enable_auto_commit=False, group_id=None)
    except (KafkaError, OSError) as error:
        raise settings.unavailable("connecting a consumer", error) from error


class CheckpointsIncomplete(BrokerUnavailable):
    """Some checkpoints cannot be read yet: a transaction left open (by a replay that died in
    the middle of a commit) holds back every later record until the broker aborts it."""


def _read_to_end(
    settings: KafkaSettings, consumer: KafkaConsumer, topic: str, start: dict[int, int] | None, complete_within_s: float | None = None
):
    """Records of ``topic`` from ``start`` (default: the beginning) to the end offsets seen
    now, read_committed: the end is the last stable offset, which an open transaction holds.
    ``complete_within_s``: raise ``CheckpointsIncomplete`` unless that end reaches every record
    written before the read began within that time."""
    partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
    if not partitions:
        return
    consumer.assign(partitions)
    for tp in partitions:
        if start is None or tp.partition not in start:
            consumer.seek_to_beginning(tp)
        else:
            consumer.seek(tp, start[tp.partition])
    end, high = stable_end_offsets(settings, consumer, partitions, complete_within_s or MARKER_WAIT_S, with_high=True)
    held = {tp.partition: (end[tp], high[tp]) for tp in partitions if end[tp] < high[tp]}
    if complete_within_s is not None and held:
        raise CheckpointsIncomplete(
            f"Kafka at {settings.bootstrap_servers}: {topic!r} is not readable to its end after {complete_within_s:g} s: "
            f"a transaction left open holds it back (partition: (last stable offset, end) {held}); the broker aborts "
            f"it at its transaction timeout"
        )
    deadline = time.monotonic() + max(settings.connect_timeout_s, 30.0)
    while any(consumer.position(tp) < end[tp] for tp in partitions):
        if time.monotonic() > deadline:
            raise BrokerUnavailable(f"Kafka at {settings.bootstrap_servers}: reading {topic!r} did not reach its end in time")
        for records in consumer.poll(timeout_ms=200).values():
            for record in records:
                if record.offset < end[TopicPartition(record.topic, record.partition)]:
                    yield record


# How long a reader waits for the commit markers of transactions that were already committed.
MARKER_WAIT_S = 5.0


def stable_end_offsets(
    settings: KafkaSettings, consumer: KafkaConsumer, partitions: list[TopicPartition], wait_s: float = MARKER_WAIT_S, with_high: bool = False
):
    """The read_committed end offsets, once the transactions already in the log have ended.

    A producer's commit returns before the broker has written the commit markers, and until
    then the last stable offset stays before that transaction: read at once, a replay that
    has just finished would look short by its last commit (seen here after about a third of
    commits). So wait, at most ``wait_s``, for the last stable offsets to reach the high
    watermarks seen now; a transaction left open longer (a live or a killed writer) is not
    waited for: its records are not readable yet, and the end is where they begin.
    ``with_high``: also return those high watermarks."""
    end = consumer.end_offsets(partitions)
    probe = KafkaConsumer(**settings.client_config())  # read_uncommitted: the high watermarks
    try:
        high = probe.end_offsets(partitions)
    finally:
        probe.close()
    deadline = time.monotonic() + wait_s
    while any(end[tp] < high[tp] for tp in partitions) and time.monotonic() < deadline:
        time.sleep(0.02 if wait_s <= MARKER_WAIT_S else 0.5)
        end = consumer.end_offsets(partitions)
    return (end, high) if with_high else end


def end_offsets(settings: KafkaSettings, topic: str) -> dict[int, int]:
    """Partition -> the offset the next message will get."""
    consumer = _consumer(settings)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        return {tp.partition: offset for tp, offset in consumer.end_offsets(partitions).items()}
    except KafkaError as error:
        raise settings.unavailable(f"reading the end offsets of {topic!r}", error) from error
    finally:
        consumer.close()


def unreachable(settings: KafkaSettings, topic: str, timeout_s: float) -> BrokerUnavailable | None:
    """None if the cluster answers about ``topic`` within ``timeout_s``, else why it did not."""
    try:
        end_offsets(replace(settings, connect_timeout_s=timeout_s), topic)
    except BrokerUnavailable as error:
        return error
    return None


def read_committed_since(settings: KafkaSettings, topic: str, start: dict[int, int]) -> list[ConsumerRecord]:
    consumer = _consumer(settings)
    try:
        return list(_read_to_end(settings, consumer, topic, start))
    except KafkaError as error:
        raise settings.unavailable(f"reading {topic!r}", error) from error
    finally:
        consumer.close()


def read_checkpoints(settings: KafkaSettings, checkpoint_topic: str, complete_within_s: float | None = None) -> list[Checkpoint]:
    """Every replay's latest committed checkpoint, read from the start of the small compacted
    checkpoint topic to its end. ``complete_within_s``: for verdicts that an old checkpoint
    would make wrong; raises ``CheckpointsIncomplete`` if a transaction left open by a dead
    replay still hides later checkpoints after that long."""
    consumer = _consumer(settings)
    try:
        latest: dict[bytes, Checkpoint] = {}
        for record in _read_to_end(settings, consumer, checkpoint_topic, None, complete_within_s):
            if record.value is None:
                latest.pop(record.key, None)  # a tombstone: forgotten
                continue
            with contextlib.suppress(ValueError, TypeError, KeyError):
                latest[record.key] = Checkpoint.from_bytes(record.value)
        return list(latest.values())
    except KafkaError as error:
        raise settings.unavailable(f"reading {checkpoint_topic!r}", error) from error
    finally:
        consumer.close()
