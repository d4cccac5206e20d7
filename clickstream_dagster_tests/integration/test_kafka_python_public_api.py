"""A replay on kafka-python's public API alone (what a kafka-python without the fast path's
private state gets), against the real broker: every row exactly once, read_committed."""

import pytest

from clickstream_dagster import kafka_python_internals
from clickstream_dagster.kafka_client import KafkaPublisher, KafkaSettings, read_committed_since
from clickstream_dagster_tests.integration.test_crash_safety import assert_every_row_exactly_once
from clickstream_dagster_tests.integration.test_replay_kafka import day_rows, prepared, run_replay, topic  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration


def test_a_replay_on_the_public_api_alone_delivers_every_row_exactly_once(
    prepared, kafka_bootstrap_servers, topic, dagster_instance, monkeypatch
):
    monkeypatch.setenv(kafka_python_internals.FAST_PATH_VARIABLE, "off")

    def private(*args, **kwargs):
        raise AssertionError("the public-API path reached kafka-python's private state")

    for capability in (
        "begin_commit",
        "begin_abort",
        "next_transaction_not_begun",
        "check_partitions_once_per_transaction",
        "abort_on_any_failed_batch",
    ):
        monkeypatch.setattr(kafka_python_internals, capability, private)
    commits = []  # whether each commit's publisher was on the fast path
    public_commit = KafkaPublisher._commit_through_public_api

    def counted(publisher, timeout_s):
        commits.append(publisher.fast_path)
        return public_commit(publisher, timeout_s)

    monkeypatch.setattr(KafkaPublisher, "_commit_through_public_api", counted)

    rows = day_rows(prepared)
    # A message every 5 ms: the day (~400 rows, ~2 s) goes out in several transactions, not one.
    result = run_replay(prepared, kafka_bootstrap_servers, dagster_instance, topic=topic, pacing="fixed", interval_ms=5)
    assert result.success
    assert len(commits) >= 2 and not any(commits), commits
    records = read_committed_since(KafkaSettings(bootstrap_servers=kafka_bootstrap_servers), topic, {})
    assert_every_row_exactly_once(records, rows)
