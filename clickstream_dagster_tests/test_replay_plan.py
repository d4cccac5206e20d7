"""The replay's plan and session below the Dagster layer: validation, the planned day, claiming
the topic and the resume point, against an in-memory cluster."""

import sys

import polars as pl
import pytest

from clickstream_dagster.assets.replay import ReplayConfig
from clickstream_dagster.checkpoints import Checkpoint, ReplayStatus
from clickstream_dagster.kafka_client import BrokerUnavailable, NotAuthorized
from clickstream_dagster.replay import DeliveryError, ProducerFenced, ReplayStopped
from clickstream_dagster.replay_plan import (
    STEP_RETRIES,
    InvalidReplayConfig,
    ReplayRefused,
    ReplaySession,
    plan_day,
    validated,
)

DAY = "2012-03-01"


def events(n: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "original_timestamp": list(range(1330560000, 1330560000 + 2 * n, 2)),
            "userId": [f"U{i % 3}" for i in range(n)],
            "ip": ["1.2.3.4"] * n,
            "productId": ["P"] * n,
            "userAgent": ["UA"] * n,
        }
    )


class Settings:
    def not_authorized(self, error, doing):
        return None


class Publisher:
    transactional = True

    def __init__(self, cluster):
        self.cluster, self.closed = cluster, False

    def commit(self, key, value, timeout_s):
        if self.cluster.commit_error is not None:
            raise self.cluster.commit_error
        self.cluster.committed.insert(0, Checkpoint.from_bytes(value))

    def flush(self, timeout_s):
        pass

    def close(self, timeout_s=0.0):
        self.closed = True


class Cluster:
    """Checkpoints in memory, newest first; what the session asked for."""

    bootstrap_servers, delivery_timeout_s, connect_timeout_s, lease_s = "memory:9092", 1.0, 1.0, 30.0

    def __init__(self, committed=(), commit_error=None, unreachable=None):
        self.committed, self.commit_error, self.gone = list(committed), commit_error, unreachable
        self.publishers: list[Publisher] = []

    def checkpoints(self):
        return list(self.committed)

    def end_offsets(self, topic):
        return {0: 7, 1: 3}

    def publisher(self, topic, headers, transactional_id):
        self.publishers.append(Publisher(self))
        return self.publishers[-1]

    def unreachable(self, topic, timeout_s):
        return self.gone

    def settings(self):
        return Settings()


def session(cluster: Cluster, n: int = 6, retry_number: int = 0, **config) -> ReplaySession:
    replay_config = ReplayConfig(topic="t", **config)
    pacing = validated(replay_config, DAY)
    said = []
    s = ReplaySession(
        replay_config, DAY, pacing, plan_day(replay_config, DAY, pacing, events(n)), cluster,
        run_id="RUN2", replay_id="RUN2", retry_number=retry_number, info=said.append, warning=said.append,
    )
    s.encode(registry=None)
    return s


def checkpoint(replay_id: str, next_row: int, status: ReplayStatus, heartbeat_ms: int = 0) -> Checkpoint:
    return Checkpoint("t", DAY, replay_id, replay_id, next_row, 6, status, heartbeat_ms, start_offsets=((0, 5),), run_ids=(replay_id,))


def test_every_problem_with_the_values_is_named_at_once():
    config = ReplayConfig(topic="bad topic!", resume=True, restart=True, limit=-1, wait_for_topic_s=float("nan"))
    with pytest.raises(InvalidReplayConfig) as refused:
        validated(config, DAY)
    message = str(refused.value)
    assert message.startswith("invalid replay config: ")
    assert "resume and restart are both true" in message and "limit=-1" in message and "wait_for_topic_s=nan" in message
    assert len(refused.value.problems) == 4


def test_the_planned_day_keeps_the_days_size_before_the_limit_and_schedules_each_row():
    config = ReplayConfig(topic="t", pacing="fixed", interval_ms=500, limit=4)
    planned = plan_day(config, DAY, validated(config, DAY), events(10))
    assert (planned.day_rows, planned.events.height) == (10, 4)
    assert planned.offsets_s.tolist() == [0, 0.5, 1.0, 1.5] and planned.expected_duration_s == 1.5
    assert planned.settings["topic"] == "t" and planned.settings["event_date"] == DAY
    assert "injection_seed" not in planned.settings


def test_late_and_duplicate_rows_are_planned_and_their_seed_recorded():
    config = ReplayConfig(topic="t", duplicate_share=0.5, injection_seed=7)
    planned = plan_day(config, DAY, validated(config, DAY), events(10))
    assert planned.settings["duplicate_messages"] == planned.injection.duplicates > 0
    assert planned.events.height == 10 + planned.injection.duplicates
    assert planned.settings["injection_seed"] == "7"


def test_a_first_replay_claims_the_topic_from_the_first_row_with_the_topics_end_offsets():
    cluster = Cluster()
    s = session(cluster)
    publisher, write = s.claim()
    assert (s.plan.start_row, s.plan.resumed) == (0, None)
    claim = cluster.committed[0]
    assert (claim.status, claim.next_row, claim.run_id) == (ReplayStatus.RUNNING, 0, "RUN2")
    assert claim.start_offsets == ((0, 7), (1, 3))
    assert s.attempts == {"attempt": 1, "stall_ms": 0}


def test_a_re_execution_resumes_at_its_replays_checkpoint_keeping_where_it_began():
    cluster = Cluster([checkpoint("RUN2", 4, ReplayStatus.STOPPED)])
    s = session(cluster)
    s.claim()
    assert s.plan.start_row == s.progress.start_row == 4
    claim = cluster.committed[0]
    assert (claim.next_row, claim.start_offsets) == (4, ((0, 5),))


def test_an_unfinished_replay_of_the_day_refuses_a_fresh_launch_before_any_producer_starts():
    cluster = Cluster([checkpoint("RUN1", 4, ReplayStatus.STOPPED)])
    with pytest.raises(ReplayRefused, match="replay of 2012-03-01 into 't'") as refused:
        session(cluster).claim()
    assert not refused.value.retryable and cluster.publishers == []


def test_a_topic_held_by_a_live_replay_is_waited_for_then_refused_naming_it():
    live = checkpoint("RUN1", 2, ReplayStatus.RUNNING, heartbeat_ms=sys.maxsize // 2)
    with pytest.raises(ReplayRefused, match="gave up after waiting 0 s") as refused:
        session(Cluster([live]), wait_for_topic_s=0.0).claim()
    assert not refused.value.retryable


@pytest.mark.parametrize("error, retryable", [(DeliveryError("timed out"), True), (ProducerFenced("newer"), False)])
def test_a_claim_the_broker_refuses_closes_the_producer_and_says_whether_a_retry_may_help(error, retryable):
    cluster = Cluster(commit_error=error)
    with pytest.raises(ReplayRefused, match="could not claim the topic") as refused:
        session(cluster).claim()
    assert refused.value.retryable is retryable and cluster.publishers[0].closed


def test_a_refusal_in_a_retry_says_the_earlier_attempts_committed_rows_stay():
    cluster = Cluster()
    s = session(cluster, retry_number=1)
    refused = s.refused(BrokerUnavailable("no broker"))
    assert f"retry 1 of {STEP_RETRIES}" in str(refused) and "re-execute the run to resume" in str(refused)


def test_a_transient_failure_is_retried_with_backoff_while_the_cluster_answers():
    s = session(Cluster())
    s.claim()
    message, error, retry_in_s = s.failed(DeliveryError("NOT_ENOUGH_REPLICAS"))
    assert retry_in_s == 5 and "failed: NOT_ENOUGH_REPLICAS" in message and "committed through row 0 of 6" in message
    assert session(Cluster(), retry_number=1).failed(DeliveryError("x"))[2] == 10


def test_a_failure_is_not_retried_when_stopped_refused_exhausted_or_the_cluster_is_gone():
    for error in (ReplayStopped("launcher gone"), ProducerFenced("newer"), NotAuthorized("no ACL")):
        assert session(Cluster()).failed(error)[2] is None
    assert session(Cluster(), retry_number=STEP_RETRIES).failed(DeliveryError("x"))[2] is None
    message, _, retry_in_s = session(Cluster(unreachable=BrokerUnavailable("Kafka at memory:9092 is down"))).failed(
        DeliveryError("x")
    )
    assert retry_in_s is None and message.endswith("Not retried: Kafka at memory:9092 is down.")
