"""``KafkaPublisher`` on kafka-python's public API alone (the path taken when the installed
kafka-python lacks what the fast path relies on): exactly once all the same. The producer here
has the public API only, so reaching for any private attribute fails the test."""

import threading

import pytest
from kafka.errors import IllegalStateError, KafkaError, KafkaTimeoutError, ProducerFencedError

from clickstream_dagster import kafka_client, kafka_python_internals
from clickstream_dagster.kafka_client import KafkaPublisher, KafkaSettings
from clickstream_dagster.replay import CommitInDoubt, DeliveryError, ProducerFenced


class Sent:
    """A finished send, as kafka-python's ``FutureRecordMetadata`` shows it."""

    def __init__(self, error=None):
        self.is_done, self.exception = True, error

    def failed(self) -> bool:
        return self.exception is not None


class PublicProducer:
    """kafka-python's public producer API, recording the calls."""

    def __init__(self, **config):
        self.config = config
        self.calls: list = []
        self.failing_send: Exception | None = None  # the next send fails with it
        self.commit_may_end = threading.Event()
        self.commit_may_end.set()

    def partitions_for(self, topic):
        return {0}

    def init_transactions(self):
        self.calls.append("init")

    def begin_transaction(self):
        self.calls.append("begin")

    def send(self, topic, value=None, key=None, headers=None, timestamp_ms=None):
        error, self.failing_send = self.failing_send, None
        self.calls.append(f"send {topic}")
        return Sent(error)

    def flush(self, timeout=None):
        self.calls.append("flush")

    def commit_transaction(self):
        self.commit_may_end.wait()
        self.calls.append("commit")

    def abort_transaction(self):
        self.calls.append("abort")

    def close(self, timeout=None):
        pass


@pytest.fixture
def publisher(monkeypatch):
    monkeypatch.setattr(kafka_client, "KafkaProducer", PublicProducer)
    built = KafkaPublisher(
        KafkaSettings(bootstrap_servers="127.0.0.1:9"), "clicks", [],
        checkpoint_topic="checkpoints", transactional_id="t", fast_path=False,
    )
    built.producer.calls.clear()  # init, begin
    return built


def test_a_commit_sends_the_checkpoint_flushes_commits_and_begins_the_next_transaction(publisher):
    publisher.send(b"k", b"v", None)
    publisher.commit(b"c", b"{}", 5)
    assert publisher.producer.calls == ["send clicks", "send checkpoints", "flush", "commit", "begin"]


def test_a_failed_send_is_never_committed_over(publisher):
    """kafka-python's commit_transaction would commit without a batch that expired."""
    publisher.producer.failing_send = KafkaTimeoutError("Expiring 1 record(s) for clicks-0")
    publisher.send(b"k", b"lost", None)
    publisher.send(b"k", b"fine", None)
    for _ in range(2):  # also not when asked again without an abort
        with pytest.raises(DeliveryError, match="Expiring 1 record"):
            publisher.commit(b"c", b"{}", 5)
    assert "commit" not in publisher.producer.calls
    assert publisher.resolve_commit(5) is False  # the commit never began

    publisher.abort(5)
    publisher.producer.calls.clear()
    publisher.commit(b"c", b"{}", 5)  # the next transaction holds none of the failed one's sends
    assert publisher.producer.calls == ["send checkpoints", "flush", "commit", "begin"]


def test_a_commit_not_confirmed_in_time_is_in_doubt_and_resolved_when_it_ends(publisher):
    publisher.producer.commit_may_end.clear()
    publisher.send(b"k", b"v", None)
    with pytest.raises(CommitInDoubt):
        publisher.commit(b"c", b"{}", 0.05)
    assert "begin" not in publisher.producer.calls
    publisher.producer.commit_may_end.set()
    assert publisher.resolve_commit(5) is True
    assert publisher.producer.calls[-2:] == ["commit", "begin"]


def test_a_commit_refused_by_the_broker_is_not_resolved_as_committed(publisher, monkeypatch):
    def refused():
        raise KafkaTimeoutError("the coordinator is gone")

    monkeypatch.setattr(publisher.producer, "commit_transaction", refused)
    with pytest.raises(DeliveryError, match="the coordinator is gone"):
        publisher.commit(b"c", b"{}", 5)
    with pytest.raises(DeliveryError):
        publisher.resolve_commit(5)  # as on the fast path: the commit's own error
    assert "begin" not in publisher.producer.calls


def test_an_abort_drops_the_transaction_and_begins_the_next(publisher):
    publisher.send(b"k", b"v", None)
    publisher.abort(5)
    assert publisher.producer.calls == ["send clicks", "abort", "begin"]


def test_without_the_fast_path_the_publisher_takes_the_public_api(monkeypatch, caplog):
    monkeypatch.setattr(kafka_client, "KafkaProducer", PublicProducer)
    settings = KafkaSettings(bootstrap_servers="127.0.0.1:9")

    def build(**kwargs):
        return KafkaPublisher(settings, "clicks", [], checkpoint_topic="checkpoints", transactional_id="t", **kwargs)

    # The probe passes here, but this producer has no private state: the public API, said so.
    assert build().fast_path is False
    assert "public API only (slower), the producer lacks KafkaProducer._transaction_manager" in caplog.text
    with pytest.raises(RuntimeError, match="KafkaProducer._transaction_manager"):
        build(fast_path=True)
    monkeypatch.setattr(kafka_python_internals, "FAST_PATH_AVAILABLE", False)
    assert build().fast_path is False


def test_sends_a_silent_broker_does_not_acknowledge_put_the_commit_in_doubt_as_on_the_fast_path(publisher, monkeypatch):
    def silent(timeout=None):
        raise KafkaTimeoutError("Timeout waiting for future")

    monkeypatch.setattr(publisher.producer, "flush", silent)
    publisher.send(b"k", b"v", None)
    with pytest.raises(CommitInDoubt, match="did not confirm a commit to 'clicks' within 5 s"):
        publisher.commit(b"c", b"{}", 5)
    assert "commit" not in publisher.producer.calls
    assert publisher.resolve_commit(5) is False  # never begun


def test_a_send_during_an_epoch_bump_waits_for_what_the_bump_finds(publisher, monkeypatch):
    """A zombie's in-flight batch fails, kafka-python bumps the epoch and refuses sends while it
    does (both paths: the send is public API); the bump then finds the producer fenced."""
    refusals = [
        IllegalStateError("Cannot call send in state BUMPING_PRODUCER_EPOCH"),
        IllegalStateError("Cannot call send in state BUMPING_PRODUCER_EPOCH"),
        KafkaError("Cannot perform send because at least one previous transactional or"
                   " idempotent request has failed with errors.", ProducerFencedError()),
    ]

    def send(*args, **kwargs):
        raise refusals.pop(0)

    monkeypatch.setattr(publisher.producer, "send", send)
    with pytest.raises(ProducerFenced, match="fenced by a newer producer"):
        publisher.send(b"k", b"v", None)
    assert refusals == []


def test_a_send_refused_in_another_state_fails_at_once(publisher, monkeypatch):
    calls = []

    def send(*args, **kwargs):
        calls.append(1)
        raise IllegalStateError("Cannot call send in state READY")

    monkeypatch.setattr(publisher.producer, "send", send)
    with pytest.raises(DeliveryError, match="state READY"):
        publisher.send(b"k", b"v", None)
    assert len(calls) == 1
