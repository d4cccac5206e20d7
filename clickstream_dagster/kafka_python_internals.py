"""Every use of kafka-python's private state, behind one wall.

kafka-python's public transaction API waits without a bound (``commit_transaction`` and
``abort_transaction`` wait on their result with no timeout), lets a transaction commit without
a batch that expired, and checks on every send whether the partition is already in the open
transaction. The replay's fast path reaches past that API for four capabilities, each a
function below:

- ``begin_commit`` / ``begin_abort``: start the commit or abort and hand back kafka-python's
  own result object, so the wait on it is bounded;
- ``next_transaction_not_begun``: after an interrupted commit, whether the next transaction
  still has to be begun;
- ``abort_on_any_failed_batch``: a batch that fails for good refuses the commit (exactly once);
- ``check_partitions_once_per_transaction``: skip the per-send check once the partition is in
  the transaction (speed).

A kafka-python release may rename any of them. ``fast_path_missing()`` names what the
installed kafka-python lacks of what these functions rely on, ``FAST_PATH_AVAILABLE`` is its
verdict at import, and ``producer_missing(producer)`` checks one producer. When anything is
missing, ``kafka_client`` uses kafka-python's public API only: slower, exactly once all the
same. ``KAFKA_PYTHON_FAST_PATH=off`` asks for the public API on purpose (tests, diagnosis).

No other module of the project touches a private attribute of a kafka-python object.
"""

from __future__ import annotations

import inspect
import os

from kafka import KafkaProducer, TopicPartition
from kafka.producer import transaction_manager as transaction_manager_module
from kafka.producer.sender import Sender
from kafka.producer.transaction_manager import TransactionManager, TransactionState

# "off": use kafka-python's public API only, whatever the probe says.
FAST_PATH_VARIABLE = "KAFKA_PYTHON_FAST_PATH"

# What the functions below call or read, as "Class.attribute" (the names a failure shows).
TRANSACTION_MANAGER_METHODS = (
    "begin_commit",
    "begin_abort",
    "maybe_add_partition_to_transaction",
    "classify_batch_error",
    "is_transactional",
)
TRANSACTION_MANAGER_CONSTANTS = ("ERROR_CLASS_RETRIABLE", "ERROR_CLASS_ABORTABLE")
# Set in TransactionManager.__init__: checked on an instance built without a broker.
TRANSACTION_MANAGER_STATE = (
    "_current_state",
    "_partitions_in_transaction",
    "_pending_partitions_in_transaction",
    "_new_partitions_in_transaction",
)
TRANSACTION_STATES = ("READY", "IN_TRANSACTION")
RESULT_MEMBERS = ("wait", "failed", "exception")  # of what begin_commit / begin_abort return
PRODUCER_ATTRIBUTES = ("_transaction_manager", "_sender")
# The patches replace methods on the manager instance: they take effect only if kafka-python
# calls them through the instance, as these lines of its source do.
CALLS_THROUGH_THE_MANAGER = {
    "Sender.classify_batch_error call": (Sender, "_transaction_manager.classify_batch_error("),
    "KafkaProducer.send maybe_add_partition_to_transaction call": (
        KafkaProducer.send,
        "_transaction_manager.maybe_add_partition_to_transaction(",
    ),
}


def fast_path_missing() -> tuple[str, ...]:
    """What the installed kafka-python lacks of what the fast path relies on, each named as
    ``Class.attribute``; empty when it has everything. Needs no broker."""
    missing = [
        f"TransactionManager.{name}" for name in TRANSACTION_MANAGER_METHODS if not callable(getattr(TransactionManager, name, None))
    ]
    missing += [f"TransactionManager.{name}" for name in TRANSACTION_MANAGER_CONSTANTS if not hasattr(TransactionManager, name)]
    missing += [f"TransactionState.{name}" for name in TRANSACTION_STATES if not hasattr(TransactionState, name)]
    if not callable(getattr(Sender, "wakeup", None)):
        missing.append("Sender.wakeup")
    try:
        manager = TransactionManager(transactional_id="probe", transaction_timeout_ms=60_000, api_version=(3, 9))
    except Exception as error:  # noqa: BLE001 - a changed constructor: say so, do not crash the import
        missing.append(
            f"TransactionManager(transactional_id, transaction_timeout_ms, api_version) ({type(error).__name__}: {error})"
        )
    else:
        missing += [f"TransactionManager.{name}" for name in TRANSACTION_MANAGER_STATE if not hasattr(manager, name)]
    # What begin_commit and begin_abort return, without starting either.
    result_type = getattr(transaction_manager_module, "TransactionalRequestResult", None)
    if result_type is None:
        missing.append("TransactionalRequestResult")
    else:
        missing += [f"TransactionalRequestResult.{member}" for member in RESULT_MEMBERS if not hasattr(result_type, member)]
    classify = getattr(TransactionManager, "classify_batch_error", None)
    if callable(classify):
        parameters = inspect.signature(classify).parameters
        missing += [
            f"TransactionManager.classify_batch_error({name}=)"
            for name in ("error", "batch", "log_start_offset")
            if name not in parameters
        ]
    try:
        init_source = inspect.getsource(KafkaProducer.__init__)
    except (OSError, TypeError):
        init_source = ""
    missing += [f"KafkaProducer.{name}" for name in PRODUCER_ATTRIBUTES if f"self.{name} =" not in init_source]
    for name, (where, call) in CALLS_THROUGH_THE_MANAGER.items():
        try:
            source = inspect.getsource(where)
        except (OSError, TypeError):
            source = ""
        if call not in source:
            missing.append(name)
    return tuple(missing)


FAST_PATH_MISSING = fast_path_missing()
FAST_PATH_AVAILABLE = not FAST_PATH_MISSING


def fast_path_wanted() -> bool:
    """Whether the fast path may be used in this process: the probe found everything, and
    ``KAFKA_PYTHON_FAST_PATH`` does not say ``off``."""
    return FAST_PATH_AVAILABLE and os.environ.get(FAST_PATH_VARIABLE, "").strip().lower() != "off"


def producer_missing(producer) -> tuple[str, ...]:
    """What this producer lacks of what the fast path reads on it (a transactional producer)."""
    missing = [f"KafkaProducer.{name}" for name in PRODUCER_ATTRIBUTES if getattr(producer, name, None) is None]
    if not missing:
        manager = producer._transaction_manager
        missing += [f"TransactionManager.{name}" for name in TRANSACTION_MANAGER_STATE if not hasattr(manager, name)]
        if not callable(getattr(producer._sender, "wakeup", None)):
            missing.append("Sender.wakeup")
    return tuple(missing)


def begin_commit(producer):
    """Start committing the open transaction and return kafka-python's result of it
    (``wait(timeout_ms)``, ``failed``, ``exception``): ``KafkaProducer.commit_transaction()``
    minus its unbounded wait. The manager is looked up at each call, not kept."""
    result = producer._transaction_manager.begin_commit()
    producer._sender.wakeup()
    return result


def begin_abort(producer):
    """Start aborting the open transaction; the result as ``begin_commit``'s, for a bounded wait."""
    result = producer._transaction_manager.begin_abort()
    producer._sender.wakeup()
    return result


def next_transaction_not_begun(producer) -> bool:
    """True when the producer is between transactions (READY): a commit completed and the
    next ``begin_transaction`` has not been called."""
    return producer._transaction_manager._current_state == TransactionState.READY


def check_partitions_once_per_transaction(producer) -> None:
    """Make a transactional send skip kafka-python's per-message check once its partition is in
    the open transaction: the check takes the manager's lock four times on every send (8% of the
    sending thread's time at max pacing) only to find the partition already there. The state
    test is the one the check makes; anything else (a new partition, an error) takes the check."""
    manager = producer._transaction_manager
    check = manager.maybe_add_partition_to_transaction

    def maybe_add_partition_to_transaction(partition: TopicPartition) -> None:
        if manager._current_state is TransactionState.IN_TRANSACTION and (
            partition in manager._partitions_in_transaction
            or partition in manager._pending_partitions_in_transaction
            or partition in manager._new_partitions_in_transaction
        ):
            return
        check(partition)

    manager.maybe_add_partition_to_transaction = maybe_add_partition_to_transaction


def abort_on_any_failed_batch(manager) -> None:
    """Make any batch that fails for good put the open transaction in the abortable state, as
    the Java client does, so its commit is refused. ``manager``: a producer's transaction
    manager (``transaction_manager(producer)``).

    kafka-python classifies a retriable error that can no longer be retried (a batch expired
    after ``delivery_timeout_ms``: its partition's leader or the coordinator's broker dead) as
    RETRIABLE and fails that batch "without any state transition": the pending commit then went
    ahead without it. With the coordinator's broker killed mid-commit, the checkpoint's batch
    expired and the transaction committed its rows without their checkpoint, so the next attempt
    resumed behind them and sent them again (a 3-broker failover test, 4 runs in 9)."""
    classify = manager.classify_batch_error

    def classify_batch_error(error, batch, log_start_offset=-1):
        outcome = classify(error, batch, log_start_offset=log_start_offset)
        if outcome == manager.ERROR_CLASS_RETRIABLE and manager.is_transactional():
            return manager.ERROR_CLASS_ABORTABLE
        return outcome

    manager.classify_batch_error = classify_batch_error


def transaction_manager(producer):
    """The producer's transaction manager (for ``abort_on_any_failed_batch``)."""
    return producer._transaction_manager
