"""kafka-python's transaction manager with the project's patch: a batch that fails for good
refuses the commit waiting for it (the Java client's rule), instead of letting it commit the
transaction without that batch. Real kafka-python objects, no broker: the sender's FAIL branch
asks ``classify_batch_error`` and moves to the abortable state on ABORTABLE."""

from kafka.errors import KafkaTimeoutError
from kafka.producer.transaction_manager import EndTxnHandler, TransactionManager, TransactionState

from clickstream_dagster.kafka_client import _abort_on_any_failed_batch


def committing(transactional: bool = True) -> tuple[TransactionManager, object]:
    manager = TransactionManager(transactional_id="t" if transactional else None, transaction_timeout_ms=60_000, api_version=(3, 9))
    _abort_on_any_failed_batch(manager)
    if not transactional:
        return manager, None
    for state in (TransactionState.INITIALIZING, TransactionState.READY, TransactionState.IN_TRANSACTION):
        manager._transition_to(state)
    manager._transaction_started = True  # a partition was added: the commit needs an EndTxn
    return manager, manager.begin_commit()


def fail_batch_as_the_sender_does(manager: TransactionManager, error: Exception) -> None:
    outcome = manager.classify_batch_error(error, None)
    if outcome == manager.ERROR_CLASS_ABORTABLE:
        manager.transition_to_abortable_error(error)


def test_an_expired_batch_refuses_the_pending_commit():
    manager, commit = committing()
    # What the sender makes of a batch expired after delivery_timeout_ms (its node silent).
    fail_batch_as_the_sender_does(manager, KafkaTimeoutError("Expiring 1 record(s) for clickstream-replay-checkpoints-0"))
    # Unpatched, the EndTxn(COMMIT) was dequeued and sent: the transaction committed without the batch.
    assert not isinstance(manager.next_request_handler(False), EndTxnHandler)
    assert commit.is_done and commit.failed
    assert isinstance(commit.exception, KafkaTimeoutError)


def test_an_idempotent_producer_without_transactions_keeps_kafka_pythons_classification():
    manager, _ = committing(transactional=False)
    assert manager.classify_batch_error(KafkaTimeoutError("expired"), None) == manager.ERROR_CLASS_RETRIABLE
