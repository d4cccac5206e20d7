"""The contract between the replay's fast path and the installed kafka-python: everything
``kafka_python_internals`` reads or calls of kafka-python's private state is there. No broker:
the producer is built against a closed port with its API version given, so it never connects.

A failure names the attribute kafka-python lacks. Then either adapt the wall
(``clickstream_dagster/kafka_python_internals.py``) to the new kafka-python, or keep the pin:
meanwhile replays take the public-API path, exactly once and slower."""

import kafka
import pytest
from kafka import KafkaProducer
from kafka.producer.transaction_manager import TransactionManager

from clickstream_dagster import kafka_python_internals as internals


@pytest.fixture
def producer():
    """A transactional producer that never connects (a closed port, the API version given)."""
    built = KafkaProducer(bootstrap_servers="127.0.0.1:9", api_version=(3, 9), transactional_id="contract")
    yield built
    built.close(timeout=0)


def test_the_installed_kafka_python_has_everything_the_fast_path_relies_on():
    missing = internals.fast_path_missing()
    assert not missing, f"kafka-python {kafka.__version__} lacks what the replay's fast path relies on: {', '.join(missing)}"
    assert internals.FAST_PATH_AVAILABLE


def test_a_real_producer_has_the_private_state_the_fast_path_reads(producer):
    missing = internals.producer_missing(producer)
    assert not missing, f"kafka-python {kafka.__version__}'s KafkaProducer lacks: {', '.join(missing)}"
    assert internals.transaction_manager(producer) is producer._transaction_manager
    assert internals.next_transaction_not_begun(producer) is False  # not even initialized


def test_the_patches_take_hold_on_a_real_producer(producer):
    """Both patches replace methods on the producer's own manager: kafka-python's sender and
    send ask the manager for them on each use (the probe checks those calls in its source)."""
    manager = internals.transaction_manager(producer)
    internals.check_partitions_once_per_transaction(producer)
    internals.abort_on_any_failed_batch(manager)
    assert manager.maybe_add_partition_to_transaction.__name__ == "maybe_add_partition_to_transaction"
    assert "maybe_add_partition_to_transaction" in manager.__dict__
    assert "classify_batch_error" in manager.__dict__


@pytest.mark.parametrize("name", internals.TRANSACTION_MANAGER_METHODS + internals.TRANSACTION_MANAGER_CONSTANTS)
def test_a_missing_method_is_named(monkeypatch, name):
    monkeypatch.delattr(TransactionManager, name)
    assert f"TransactionManager.{name}" in internals.fast_path_missing()


@pytest.mark.parametrize("name", internals.TRANSACTION_MANAGER_STATE)
def test_a_renamed_piece_of_the_managers_state_is_named(monkeypatch, name):
    """kafka-python renaming a private attribute in ``TransactionManager.__init__``."""
    init = TransactionManager.__init__

    def renamed(self, *args, **kwargs):
        init(self, *args, **kwargs)
        setattr(self, name + "_renamed", getattr(self, name))
        delattr(self, name)

    monkeypatch.setattr(TransactionManager, "__init__", renamed)
    assert f"TransactionManager.{name}" in internals.fast_path_missing()


def test_a_producer_without_the_private_state_is_named():
    class Elsewhere:
        _sender = None

    assert internals.producer_missing(Elsewhere()) == ("KafkaProducer._transaction_manager", "KafkaProducer._sender")


def test_a_sender_that_no_longer_asks_the_manager_is_named(monkeypatch):
    """The failed-batch rule is a method set on the manager instance: a sender that classified
    errors some other way would silently ignore it."""
    name = "Sender.classify_batch_error call"
    monkeypatch.setitem(internals.CALLS_THROUGH_THE_MANAGER, name, (internals.Sender, "no such call("))
    assert name in internals.fast_path_missing()


def test_the_environment_can_ask_for_the_public_api(monkeypatch):
    monkeypatch.delenv(internals.FAST_PATH_VARIABLE, raising=False)
    assert internals.fast_path_wanted() == internals.FAST_PATH_AVAILABLE
    monkeypatch.setenv(internals.FAST_PATH_VARIABLE, "off")
    assert not internals.fast_path_wanted()
