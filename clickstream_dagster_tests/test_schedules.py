"""replay_cycle: the day each tick picks, and skipping while a replay runs."""

from datetime import datetime, timedelta, timezone

import pytest
from dagster import DagsterRunStatus, RunRequest, SkipReason, build_schedule_context

from clickstream_dagster.cycle import cycle_day
from clickstream_dagster.definitions import defs
from clickstream_dagster.jobs import replay_clickstream
from clickstream_dagster.partitions import clickstream_days
from clickstream_dagster.schedules import cron_period_s, replay_cycle

DAYS = clickstream_days.get_partition_keys()
TICK = datetime(2026, 11, 28, 6, 0, tzinfo=timezone.utc)


def test_consecutive_ticks_take_consecutive_days_and_wrap_after_fifteen():
    picked = [cycle_day(TICK + timedelta(hours=h), 3600, DAYS) for h in range(16)]
    assert picked[:15] == DAYS[DAYS.index(picked[0]) :] + DAYS[: DAYS.index(picked[0])]
    assert picked[15] == picked[0]


def test_the_same_tick_always_takes_the_same_day():
    assert cycle_day(TICK, 3600, DAYS) == cycle_day(TICK, 3600, DAYS)
    assert cycle_day(datetime(2012, 3, 1, tzinfo=timezone.utc), 3600, DAYS) == "2012-03-01"


def test_cycle_needs_a_positive_period():
    with pytest.raises(ValueError, match="period_s=0"):
        cycle_day(TICK, 0, DAYS)


@pytest.mark.parametrize(("cron", "period"), [("0 * * * *", 3600), ("*/5 * * * *", 300), ("30 2 * * *", 86400)])
def test_the_period_is_the_crons(cron, period):
    assert cron_period_s(cron, TICK) == period


def test_a_tick_requests_the_days_replay_with_original_pacing(dagster_instance):
    result = replay_cycle(build_schedule_context(instance=dagster_instance, scheduled_execution_time=TICK))
    assert isinstance(result, RunRequest)
    assert result.partition_key == cycle_day(TICK, 3600, DAYS)
    assert result.run_config == {"ops": {"click_data": {"config": {"topic": "click-data", "pacing": "original", "speed": 1.0, "restart": True}}}}
    assert result.tags["clickstream/day"] == result.partition_key
    assert result.tags["clickstream/topic"] == "click-data"


def test_a_tick_is_skipped_with_the_reason_while_a_replay_runs(dagster_instance):
    run = dagster_instance.create_run_for_job(
        defs.resolve_job_def(replay_clickstream.name),
        tags={"dagster/partition": "2012-03-04"},
        status=DagsterRunStatus.STARTED,
    )
    result = replay_cycle(build_schedule_context(instance=dagster_instance, scheduled_execution_time=TICK))
    assert isinstance(result, SkipReason)
    assert run.run_id[:8] in result.skip_message and "2012-03-04" in result.skip_message
