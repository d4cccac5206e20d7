"""Replays into different topics run at once, on either instance; the instance records them.

The queued run coordinator limits runs per ``clickstream/topic`` tag value, not overall: two
replays of different days into two topics are dequeued together and run in two run worker
processes side by side (the Postgres instance is deploy/dagster.yaml, the SQLite one the
project's own). Replays into one topic queue instead (test_operate.py's backfill test).
"""

import uuid

import pytest

from clickstream_dagster_tests.e2e.conftest import TOPIC_TAG, read_topic, run_tags

pytestmark = pytest.mark.e2e


@pytest.fixture
def two_topics(kafka_bootstrap_servers):
    names = [f"e2e-parallel-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    yield names
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap_servers, client_id="e2e-cleanup")
    try:
        admin.delete_topics([n for n in names if n in admin.list_topics()], timeout_ms=30000)
    finally:
        admin.close()


def test_replays_of_two_days_into_two_topics_run_at_the_same_time(
    gql, prepared_days, two_topics, kafka_bootstrap_servers, idle_replays
):
    limit = 300  # 300 messages 100 ms apart: each run sends for 30 s, longer than a run takes to launch
    # Tagged with their topics, as the schedule tags its runs (the job's own tag is the default
    # topic, whatever the run config says: a launch into another topic must set the tag).
    runs = {
        day: gql.submit_replay(
            day, {"topic": topic, "pacing": "fixed", "interval_ms": 100, "limit": limit}, tags={TOPIC_TAG: topic}
        )
        for day, topic in zip(("2012-03-02", "2012-03-03"), two_topics)
    }
    finished = {}
    for (day, run_id), topic in zip(runs.items(), two_topics):
        run = finished[day] = gql.wait_for_run(run_id)
        assert run["status"] == "SUCCESS", gql.describe_run(run_id)
        assert run_tags(run)[TOPIC_TAG] == topic
        assert len(read_topic(kafka_bootstrap_servers, topic)) == min(limit, prepared_days[day])
    # Each started before the other ended: they ran side by side, not one after the other.
    first, second = finished.values()
    assert first["startTime"] < second["endTime"] and second["startTime"] < first["endTime"], (
        f"ran one after the other: {[(r['startTime'], r['endTime']) for r in finished.values()]}"
    )


def test_the_instance_storage_holds_the_runs(dagster_dev, prepared_run, postgres_server_if_used):
    """On the postgres instance, the runs are rows in Postgres (not a SQLite file in DAGSTER_HOME)."""
    if dagster_dev.instance == "sqlite":
        assert (dagster_dev.home / "history" / "runs.db").exists()
        return
    env = dagster_dev.postgres_env
    rows = postgres_server_if_used.query(
        env["DAGSTER_PG_DB"], "SELECT status FROM runs WHERE run_id = %s", prepared_run["runId"]
    )
    assert rows == [("SUCCESS",)]
    assert not (dagster_dev.home / "history" / "runs.db").exists()
