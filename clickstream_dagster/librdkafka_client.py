"""librdkafka (confluent-kafka) behind the replay's ``Publisher`` protocol: the same guarantees
as ``kafka_client.KafkaPublisher`` (idempotent, acks=all, transactions with the checkpoint,
bounded waits, the same error messages), with librdkafka's C send path instead of
kafka-python's per-message Python one.

Optional: installed with ``pip install 'clickstream-dagster[librdkafka]'`` and chosen with
``client: librdkafka`` on the Kafka resource (``KAFKA_CLIENT``). No Dagster here.
"""

from __future__ import annotations

import time
import warnings

try:
    from confluent_kafka import KafkaError, KafkaException, Producer
except ImportError as error:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "client=librdkafka needs the confluent-kafka package: pip install 'clickstream-dagster[librdkafka]' "
        "(or set client / KAFKA_CLIENT to kafka-python)"
    ) from error

from clickstream_dagster.kafka_client import KafkaSettings
from clickstream_dagster.replay import CommitInDoubt, DeliveryError, ProducerFenced

# librdkafka error codes meaning a newer producer with our transactional id took over.
_FENCED = {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}


def librdkafka_config(
    settings: KafkaSettings, *, transactional_id: str | None = None, delivery_timeout_s: float = 30.0
) -> dict:
    """librdkafka's names for ``KafkaSettings`` and the replay's producer settings.

    The same producer as ``KafkaPublisher``: idempotent, acks=all, linger 5 ms, every wait
    bounded; keys land on the partitions kafka-python and Java clients pick (murmur2)."""
    timeout_ms = int(delivery_timeout_s * 1000)
    connect_ms = int(settings.connect_timeout_s * 1000)
    config = {
        "bootstrap.servers": ",".join(s.strip() for s in settings.bootstrap_servers.split(",") if s.strip()),
        "client.id": settings.client_id,
        "security.protocol": settings.security_protocol.lower(),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        # librdkafka's default (consistent_random) puts a key elsewhere than kafka-python/Java do.
        "partitioner": "murmur2_random",
        # A message not acknowledged this long after it was produced fails (delivery_timeout_s).
        "message.timeout.ms": timeout_ms,
        # An unreachable cluster fails within connect_timeout_s, as with kafka-python.
        "socket.connection.setup.timeout.ms": connect_ms,
        # A request may wait as long as delivery_timeout_s, as with kafka-python: a broker pausing
        # for less than that delays the replay but does not fail it.
        "socket.timeout.ms": max(timeout_ms, 1000),
        "request.timeout.ms": max(timeout_ms, 1000),
        # The coordinator answers CONCURRENT_TRANSACTIONS until the previous markers are written:
        # back off briefly, as KafkaPublisher does (retry_backoff_ms=5), so commits stay fast.
        "retry.backoff.ms": 5,
    }
    if transactional_id is not None:
        config["transactional.id"] = transactional_id
        # librdkafka requires message.timeout.ms <= transaction.timeout.ms.
        config["transaction.timeout.ms"] = max(timeout_ms, 60_000)
    if settings.security_protocol.startswith("SASL"):
        config |= {
            "sasl.mechanism": settings.sasl_mechanism,
            "sasl.username": settings.sasl_username,
            "sasl.password": settings.sasl_password,
        }
    for ours, theirs in (
        ("ssl_cafile", "ssl.ca.location"),
        ("ssl_certfile", "ssl.certificate.location"),
        ("ssl_keyfile", "ssl.key.location"),
    ):
        if getattr(settings, ours):
            config[theirs] = getattr(settings, ours)
    return config


def _timed_out(error: KafkaException) -> bool:
    """librdkafka gave up waiting (a transaction call's timeout): the outcome is unknown."""
    kafka_error = error.args[0] if error.args else None
    return isinstance(kafka_error, KafkaError) and kafka_error.code() == KafkaError._TIMED_OUT


class LibrdkafkaDelivery:
    """One message's delivery report, shaped like kafka-python's ``FutureRecordMetadata``
    (``is_done``, ``failed()``, ``exception``, ``value.partition/.offset``, ``add_callback``).
    Filled by librdkafka's delivery callback, served from ``poll``/``flush``/commits."""

    __slots__ = ("is_done", "exception", "partition", "offset", "acked_at", "_callbacks", "_sent_at")

    def __init__(self) -> None:
        self.is_done = False
        self.exception: BaseException | None = None
        self._callbacks: list | None = None
        self.acked_at: float | None = None  # time.monotonic() of the acknowledgement, when watched

    def failed(self) -> bool:
        return self.exception is not None

    @property
    def value(self) -> LibrdkafkaDelivery:
        return self  # .partition, .offset

    def add_callback(self, fn, *args) -> LibrdkafkaDelivery:
        """``fn(*args, metadata)`` once the broker acknowledged the message; ``metadata.acked_at``
        says when (reports are handed over at the next poll, which may come later)."""
        if self.is_done:
            if self.exception is None:
                fn(*args, self)
        elif self._callbacks is None:
            self._callbacks, self._sent_at = [(fn, args)], time.monotonic()
        else:
            self._callbacks.append((fn, args))
        return self

    def _report(self, error, message) -> None:
        if error is not None:
            self.exception = KafkaException(error)
        else:
            self.partition, self.offset = message.partition(), message.offset()
        self.is_done = True
        if self._callbacks and error is None:
            latency = message.latency()  # produce() to acknowledgement, measured by librdkafka
            self.acked_at = self._sent_at + latency if latency is not None else time.monotonic()
            for fn, args in self._callbacks:
                fn(*args, self)


class LibrdkafkaBatch:
    """The delivery reports of one batch of sends (a ``BatchDelivery``): one Python object
    and one bound callback for the batch, so a report costs a count and an offset compare."""

    __slots__ = ("count", "reported", "acked", "spans", "exception")

    def __init__(self) -> None:
        self.count = self.reported = self.acked = 0
        self.spans: dict[int, list[int]] = {}
        self.exception: BaseException | None = None

    @property
    def is_done(self) -> bool:
        return self.reported == self.count

    def failed(self) -> bool:
        return self.exception is not None

    def _report(self, error, message) -> None:
        self.reported += 1
        if error is not None:
            if self.exception is None:
                self.exception = KafkaException(error)
            return
        self.acked += 1
        partition, offset = message.partition(), message.offset()
        span = self.spans.get(partition)
        if span is None:
            self.spans[partition] = [offset, offset]
        elif offset > span[1]:  # acknowledged in order within a partition (idempotence)
            span[1] = offset
        elif offset < span[0]:
            span[0] = offset


class LibrdkafkaPublisher:
    """A ``Publisher`` for one topic on confluent-kafka: the same contract as ``KafkaPublisher``.

    With a ``transactional_id`` (exactly_once) every message is sent inside a transaction that
    also writes the replay's checkpoint, and creating the publisher fences every earlier
    producer with that id, whichever client it used.
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
        **producer_options,
    ):
        self.settings, self.topic, self.headers = settings, topic, headers
        self.checkpoint_topic = checkpoint_topic
        self.transactional = transactional_id is not None
        self.transactional_id = transactional_id
        self._committing = False  # commit_transaction was called by the last commit (see resolve_commit)
        self.delivery_timeout_s = delivery_timeout_s
        config = librdkafka_config(settings, transactional_id=transactional_id, delivery_timeout_s=delivery_timeout_s)
        self.producer = Producer(config | producer_options)
        self._produce, self._poll = self.producer.produce, self.producer.poll
        try:
            # librdkafka connects lazily: ask for the topics' metadata now, so an unreachable
            # cluster fails here within connect_timeout_s, and the first send does not wait for it.
            for name in (topic, checkpoint_topic):
                self.producer.list_topics(name, timeout=settings.connect_timeout_s)
            if self.transactional:
                self.producer.init_transactions(settings.connect_timeout_s)
                self.producer.begin_transaction()
        except KafkaException as error:
            self._discard()
            raise settings.unavailable("starting the producer", error.args[0] if error.args else error) from error

    def send(self, key: bytes, value: bytes, timestamp_ms: int | None) -> LibrdkafkaDelivery:
        delivery = LibrdkafkaDelivery()
        try:
            self._produce(self.topic, value, key, on_delivery=delivery._report, timestamp=timestamp_ms or 0, headers=self.headers)
        except BufferError:
            self._produce_when_room(key, value, timestamp_ms, delivery._report)
        except KafkaException as error:
            raise self._delivery_error(f"sending to {self.topic!r}", error) from error
        self._poll(0)  # serve delivery reports that arrived meanwhile (no waiting)
        return delivery

    def new_batch(self) -> LibrdkafkaBatch:
        return LibrdkafkaBatch()

    def send_batch(self, batch: LibrdkafkaBatch, keys: list[bytes], values: list[bytes], timestamps_ms: list) -> None:
        """``send`` for many messages, reported into ``batch``: reports are served once per batch."""
        produce, topic, headers, report = self._produce, self.topic, self.headers, batch._report
        try:
            for key, value, timestamp_ms in zip(keys, values, timestamps_ms):
                try:
                    produce(topic, value, key, on_delivery=report, timestamp=timestamp_ms or 0, headers=headers)
                except BufferError:
                    self._produce_when_room(key, value, timestamp_ms, report)
                batch.count += 1
        except KafkaException as error:
            raise self._delivery_error(f"sending to {self.topic!r}", error) from error
        finally:
            self._poll(0)

    def _produce_when_room(self, key: bytes, value: bytes, timestamp_ms: int | None, on_delivery) -> None:
        """The local queue is full: wait for acknowledgements to make room, at most
        delivery_timeout_s (kafka-python's max_block_ms)."""
        waited = 0.0
        while True:
            self._poll(0.05)
            waited += 0.05
            try:
                self._produce(self.topic, value, key, on_delivery=on_delivery, timestamp=timestamp_ms or 0, headers=self.headers)
                return
            except BufferError as error:
                if waited >= self.delivery_timeout_s:
                    raise DeliveryError(
                        f"Kafka at {self.settings.bootstrap_servers}: sending to {self.topic!r} timed out: "
                        f"the send queue stayed full for {self.delivery_timeout_s:g} s"
                    ) from error
            except KafkaException as error:
                raise self._delivery_error(f"sending to {self.topic!r}", error) from error

    def commit(self, checkpoint_key: bytes, checkpoint_value: bytes, timeout_s: float) -> None:
        self._committing = False
        try:
            self._produce(self.checkpoint_topic, checkpoint_value, checkpoint_key)
            if not self.transactional:
                self._poll(0)
                return
            self._committing = True
            self.producer.commit_transaction(timeout_s)
            # Every message of the transaction is acknowledged: hand their reports over now.
            self.producer.flush(timeout_s)
            self.producer.begin_transaction()
        except KafkaException as error:
            if _timed_out(error):
                raise CommitInDoubt(
                    f"Kafka at {self.settings.bootstrap_servers} did not confirm a commit to {self.topic!r} "
                    f"within {timeout_s:g} s (delivery_timeout_s)"
                ) from error
            raise self._delivery_error(f"committing to {self.topic!r}", error) from error
        except BufferError as error:
            raise DeliveryError(
                f"Kafka at {self.settings.bootstrap_servers}: committing to {self.topic!r} failed: the send queue is full"
            ) from error

    def resolve_commit(self, timeout_s: float) -> bool:
        if not self._committing:  # interrupted before commit_transaction: the transaction is open
            return False
        try:
            try:
                # Allowed only once the last transaction completed: it committed.
                self.producer.begin_transaction()
            except KafkaException:
                # Still in a transaction: the interrupted one (commit_transaction resumes its
                # commit, or fails if it cannot commit), or the next, already begun after the
                # commit (committing it, empty, is harmless).
                self.producer.commit_transaction(timeout_s)
                self.producer.begin_transaction()
            self.producer.flush(timeout_s)  # hand the committed messages' reports over
            return True
        except KafkaException as error:
            if _timed_out(error):
                raise CommitInDoubt(
                    f"Kafka at {self.settings.bootstrap_servers} did not confirm an interrupted commit within {timeout_s:g} s"
                ) from error
            return False

    def flush(self, timeout_s: float) -> None:
        remaining = self.producer.flush(timeout_s)
        if remaining:
            raise DeliveryError(
                f"Kafka at {self.settings.bootstrap_servers}: flushing to {self.topic!r} timed out: "
                f"{remaining} message(s) not acknowledged within {timeout_s:g} s"
            )

    def abort(self, timeout_s: float) -> None:
        """Drop the open transaction (bounded), and begin the next one."""
        if not self.transactional:
            return
        try:
            self.producer.abort_transaction(timeout_s)
            self.producer.begin_transaction()
        except KafkaException as error:
            if _timed_out(error):
                raise DeliveryError(
                    f"Kafka at {self.settings.bootstrap_servers} did not confirm an abort within {timeout_s:g} s"
                ) from error
            raise self._delivery_error(f"aborting a transaction on {self.topic!r}", error) from error

    def close(self, timeout_s: float = 5.0) -> None:
        """Best effort and bounded: never raises, so it never hides the error that led here."""
        try:
            if self.producer.flush(timeout_s):
                self.producer.purge()  # a dead broker: drop the rest rather than block in close
                self.producer.poll(0)
        except Exception:  # noqa: BLE001 - closing must not mask the replay's own outcome
            pass
        self._discard()

    def _discard(self) -> None:
        try:
            with warnings.catch_warnings():  # "abort_transaction failed during close": already reported
                warnings.simplefilter("ignore", RuntimeWarning)
                # Producer.close() came with confluent-kafka 2.13; before, the handle is freed
                # (librdkafka destroyed) when the last reference goes.
                close = getattr(self.producer, "close", None)
                if close is not None:
                    close()
        except Exception:  # noqa: BLE001
            pass

    def _delivery_error(self, doing: str, error: KafkaException) -> DeliveryError:
        kafka_error = error.args[0] if error.args else None
        code = kafka_error.code() if isinstance(kafka_error, KafkaError) else None
        if code in _FENCED:
            return ProducerFenced(
                f"{doing}: fenced by a newer producer with transactional id "
                f"{self.transactional_id!r} (another attempt of this replay took over)"
            )
        reason = kafka_error.str() if isinstance(kafka_error, KafkaError) else str(error)
        name = kafka_error.name() if isinstance(kafka_error, KafkaError) else type(error).__name__
        if code in (KafkaError._TIMED_OUT, KafkaError._MSG_TIMED_OUT, KafkaError.REQUEST_TIMED_OUT):
            return DeliveryError(f"Kafka at {self.settings.bootstrap_servers}: {doing} timed out: {name}: {reason}")
        return DeliveryError(f"Kafka at {self.settings.bootstrap_servers}: {doing} failed: {name}: {reason}")
