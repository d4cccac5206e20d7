"""replay_cycle: keep a live feed going by replaying the next day on every tick."""

import os
from datetime import datetime, timezone

from dagster import (
    DagsterRunStatus,
    DefaultScheduleStatus,
    RunRequest,
    RunsFilter,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)

# Private, but the same iterator Dagster schedules tick on: the cycle's period is the cron's.
from dagster._utils.schedules import cron_string_iterator

from clickstream_dagster.assets.replay import DAY_TAG, DEFAULT_TOPIC, PACING_TAG, TOPIC_TAG
from clickstream_dagster.cycle import cycle_day
from clickstream_dagster.jobs import replay_clickstream
from clickstream_dagster.partitions import clickstream_days

REPLAY_CYCLE_CRON = os.environ.get("REPLAY_CYCLE_CRON", "0 * * * *")
# Pacing of scheduled replays: the original timing, at REPLAY_CYCLE_SPEED (default 1). Each
# tick plays its day whole, even where that day's last play did not finish (restart).
REPLAY_CYCLE_CONFIG = {
    "topic": os.environ.get("REPLAY_CYCLE_TOPIC", DEFAULT_TOPIC),
    "pacing": "original",
    "speed": float(os.environ.get("REPLAY_CYCLE_SPEED", "1.0")),
    "restart": True,
}
IN_PROGRESS = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]


def cron_period_s(cron: str, at: datetime) -> float:
    """Seconds between the two cron ticks following ``at``."""
    ticks = cron_string_iterator(at.timestamp(), cron, "UTC")
    first, second = next(ticks), next(ticks)
    return (second - first).total_seconds()


@schedule(
    name="replay_cycle",
    cron_schedule=REPLAY_CYCLE_CRON,
    execution_timezone="UTC",
    job=replay_clickstream,
    default_status=DefaultScheduleStatus.STOPPED,
    description="Each tick replays the next of the days (CLICKSTREAM_DAYS; round robin from the tick time), "
    "original timing; a tick that would overlap a replay still running is skipped with the reason.",
)
def replay_cycle(context: ScheduleEvaluationContext):
    tick = context.scheduled_execution_time or datetime.now(timezone.utc)
    day = cycle_day(tick, cron_period_s(REPLAY_CYCLE_CRON, tick), clickstream_days.get_partition_keys())
    running = context.instance.get_run_records(
        filters=RunsFilter(job_name=replay_clickstream.name, statuses=IN_PROGRESS), limit=1
    )
    if running:
        run = running[0].dagster_run
        return SkipReason(
            f"tick for {day} skipped: replay run {run.run_id[:8]} of {run.tags.get('dagster/partition', '?')} "
            f"is still {run.status.value}; replays into one topic never overlap"
        )
    config = REPLAY_CYCLE_CONFIG
    return RunRequest(
        run_key=f"replay_cycle:{tick.isoformat()}",
        partition_key=day,
        run_config={"ops": {"click_data": {"config": config}}},
        tags={TOPIC_TAG: config["topic"], PACING_TAG: config["pacing"], DAY_TAG: day},
    )
