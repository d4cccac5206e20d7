"""Sensors: prepare again when the clickstream log changes; keep the live replay feed going;
fail the replay runs whose process is gone."""

import json
import os
import time
from pathlib import Path

from dagster import (
    AssetKey,
    AssetObservation,
    AssetRecordsFilter,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

# Private, but these are the tags Dagster itself records data versions and their provenance
# under: an observation tagged with the log's sha256 is the version every prepare run reads.
from dagster._core.definitions.data_version import DATA_VERSION_TAG, get_input_data_version_tag

# Private too: the tag Dagster's run retries put on a failed run it will re-execute, and the
# one its run launcher puts on the runs it launched (a command-line run has none).
from dagster._core.storage.tags import GRPC_INFO_TAG, WILL_RETRY_TAG

from clickstream_dagster.assets.prepare import log_metadata
from clickstream_dagster.assets.prepare import log_metadata
from clickstream_dagster.assets.replay import DAY_TAG, DEFAULT_TOPIC, PACING_TAG, TOPIC_TAG, ReplayConfig
from clickstream_dagster.checkpoints import abandoned_reason
from clickstream_dagster.cleaning import file_version
from clickstream_dagster.feed import (
    FAILED,
    FINISHED,
    FeedRun,
    failure_note,
    feed_run_config,
    newly_finished,
    next_step,
)
from clickstream_dagster.jobs import prepare_clickstream, replay_clickstream
from clickstream_dagster.kafka_client import MARKER_WAIT_S, BrokerUnavailable
from clickstream_dagster.partitions import clickstream_days
from clickstream_dagster.resources.kafka import KafkaResource
from clickstream_dagster.resources.log_file import ClickstreamLogFile

CLICKSTREAM_CSV_KEY = "clickstream_csv"
PREPARED_ASSETS = ("clickstream_events", "clickstream_rejects")


def log_observation(version: dict) -> AssetObservation:
    """The log as seen now, its sha256 as data version: a prepare run that starts after this
    records it as the input version it read (``dagster/input_data_version/clickstream_csv``)."""
    return AssetObservation(
        asset_key=CLICKSTREAM_CSV_KEY,
        metadata=log_metadata(version),
        tags={DATA_VERSION_TAG: version["sha256"]},
    )


def prepared_log_version(instance: DagsterInstance) -> str | None:
    """The log version every prepared day and the rejects were last materialized from, if they agree.

    None when something is missing or the latest materializations read different versions (or
    none was recorded): then only preparing again makes the data match one log.
    """
    version_tag = get_input_data_version_tag(AssetKey(CLICKSTREAM_CSV_KEY))
    filters = [
        AssetRecordsFilter(AssetKey("clickstream_events"), asset_partitions=[day])
        for day in clickstream_days.get_partition_keys()
    ]
    filters.append(AssetRecordsFilter(AssetKey("clickstream_rejects")))
    versions = set()
    for records_filter in filters:
        records = instance.fetch_materializations(records_filter, limit=1).records
        if not records:
            return None
        versions.add((records[0].event_log_entry.tags or {}).get(version_tag))
    [version] = versions if len(versions) == 1 else [None]
    return version


@sensor(
    name="clickstream_log_changed",
    job=prepare_clickstream,
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,
    description="When the log's content differs from what the last prepare read, prepare all days again in one run.",
)
def clickstream_log_changed(context: SensorEvaluationContext, clickstream_log: ClickstreamLogFile):
    path = Path(clickstream_log.path)
    if not path.is_file():
        return SkipReason(f"clickstream log {path} not found (CLICKSTREAM_CSV)")
    previous = json.loads(context.cursor) if context.cursor else None
    current = file_version(path, previous)
    cursor = json.dumps(current)
    if previous and previous.get("sha256") == current["sha256"]:
        return SensorResult(skip_reason=SkipReason(f"{path.name} unchanged"), cursor=cursor)
    # First sight (a new sensor, or a new instance after `make demo`) or a new content: prepare
    # only if the prepared days were not read from exactly this log.
    if prepared_log_version(context.instance) == current["sha256"]:
        return SensorResult(
            skip_reason=SkipReason(
                f"all days already prepared from {path.name} (sha256 {current['sha256'][:12]})"
            ),
            cursor=cursor,
        )
    keys = clickstream_days.get_partition_keys()
    return SensorResult(
        run_requests=[
            RunRequest(
                # The content and its mtime: a log that goes back to an earlier content is
                # prepared again (a key made of the hash alone would be deduplicated away).
                run_key=f"{current['sha256']}@{current['mtime_ns']}",
                tags={
                    # One run over all days: the log is scanned once.
                    "dagster/asset_partition_range_start": keys[0],
                    "dagster/asset_partition_range_end": keys[-1],
                },
            )
        ],
        # Recorded before the run is launched, so the run reads (and records) this version.
        asset_events=[log_observation(current)],
        cursor=cursor,
    )


# --------------------------------------------------------------------------- the live feed

REPLAY_FEED = "replay_feed"
REPLAY_FEED_CONFIG = feed_run_config(os.environ, set(ReplayConfig.model_fields), DEFAULT_TOPIC)
# How many of its latest runs the feed reads back: enough to find the queued one and the failures.
FEED_HISTORY = 50


def _replay_config(run: DagsterRun) -> dict:
    """The click_data config a replay run was launched with."""
    return run.run_config.get("ops", {}).get("click_data", {}).get("config", {}) if run.run_config else {}


def topic_runs_one_at_a_time(instance: DagsterInstance, topic: str) -> bool:
    """True when the instance's run queue starts runs tagged with ``topic`` one at a time
    (``concurrency.runs.tag_concurrency_limits`` on the topic tag, limit 1)."""
    queue = instance.get_concurrency_config().run_queue_config  # None: no run queue at all
    for limit in (queue.tag_concurrency_limits if queue else None) or []:
        value = limit.get("value")
        per_value = isinstance(value, dict) and value.get("applyLimitPerUniqueValue")
        if (
            limit.get("key") == TOPIC_TAG
            and limit.get("limit") == 1
            and (value is None or value == topic or per_value)
        ):
            return True
    return False


@sensor(
    name=REPLAY_FEED,
    job=replay_clickstream,
    minimum_interval_seconds=5,
    default_status=DefaultSensorStatus.STOPPED,
    description="A live feed: replays the days of CLICKSTREAM_DAYS one after the other, for ever, each starting when the "
    "previous one ends (original timing at REPLAY_FEED_SPEED into REPLAY_FEED_TOPIC). The next day "
    "is launched while the current one plays and waits in its run, so that its first page view follows "
    "the day before's last one after the recorded gap; a failed day is reported and the feed goes on. Event "
    "time goes forward for ever (each day as of the day after the one before) and each round through "
    "the days brings new visitor ids (visitor_epoch = the round), unless REPLAY_FEED_CONFIG sets "
    "event_date or visitor_epoch.",
)
def replay_feed(context: SensorEvaluationContext):
    days = clickstream_days.get_partition_keys()
    config = REPLAY_FEED_CONFIG
    records = context.instance.get_run_records(
        filters=RunsFilter(job_name=replay_clickstream.name, tags={"dagster/sensor_name": REPLAY_FEED}),
        limit=FEED_HISTORY,
    )
    runs = [
        FeedRun(
            r.dagster_run.run_id,
            r.dagster_run.tags.get("dagster/partition"),
            r.dagster_run.status.value,
            r.end_time,
            reexecutes=r.dagster_run.parent_run_id,
            will_retry=r.dagster_run.tags.get(WILL_RETRY_TAG) == "true",
            event_date=_replay_config(r.dagster_run).get("event_date"),
            visitor_epoch=_replay_config(r.dagster_run).get("visitor_epoch"),
        )
        for r in records
    ]
    finished = [run for run in runs if run.status in FINISHED]
    # The cursor only remembers which ended runs were reported; where the feed is comes from
    # its runs, so a restarted daemon (or a reset cursor) goes on from the last day played.
    reported = (
        json.loads(context.cursor)["reported"] if context.cursor else (finished[0].run_id if finished else "")
    )
    notes = [failure_note(run, days) for run in newly_finished(runs, reported) if run.status in FAILED]
    for note in notes:
        context.log.warning(note)
    cursor = json.dumps({"reported": finished[0].run_id if finished else reported})

    step = next_step(
        runs, days, queue_ahead=topic_runs_one_at_a_time(context.instance, config["topic"]), now=time.time()
    )
    if step.day is None:
        return SensorResult(skip_reason=SkipReason(" ".join([*notes, step.reason])), cursor=cursor)
    context.log.info(step.reason)
    # The day moved on in event time and the round's visitors, unless REPLAY_FEED_CONFIG fixes them.
    moved = {"event_date": step.event_date, "visitor_epoch": step.visitor_epoch}
    config = {name: value for name, value in moved.items() if name not in config} | config
    if step.after:
        # The day before may still be playing: this run starts at once and waits for it in its
        # own process (not in the queue: no topic tag until its step adds it), so that its first
        # page view follows that day's last one after the recorded gap.
        config = config | {"after_run": step.after}
    return SensorResult(
        run_requests=[
            RunRequest(
                # The day and the run it follows: a tick evaluated twice requests it once.
                run_key=f"{REPLAY_FEED}:{step.after or 'start'}:{step.day}",
                partition_key=step.day,
                run_config={"ops": {"click_data": {"config": config}}},
                tags={PACING_TAG: config["pacing"], DAY_TAG: step.day},
            )
        ],
        cursor=cursor,
    )


REPLAY_WATCHDOG = "replay_watchdog"
REPLAY_ASSET = AssetKey("click_data")


def _replay_topic(run: DagsterRun) -> str:
    return _replay_config(run).get("topic") or run.tags.get(TOPIC_TAG) or DEFAULT_TOPIC


def _is_replay(run: DagsterRun) -> bool:
    return run.job_name == replay_clickstream.name or REPLAY_ASSET in (run.asset_selection or ())


@sensor(
    name=REPLAY_WATCHDOG,
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,
    description="Marks failed a replay run still shown as started whose process is gone (a command-line "
    "run killed with kill -9; runs whose code server died with them), judged by the replay's checkpoint "
    "in Kafka: a live replay renews it every few seconds. Dagster itself fails (and retries) a "
    "daemon-launched run whose run worker dies.",
)
def replay_watchdog(context: SensorEvaluationContext, kafka: KafkaResource):
    now = time.time()
    started = [
        record
        for record in context.instance.get_run_records(filters=RunsFilter(statuses=[DagsterRunStatus.STARTED]))
        if _is_replay(record.dagster_run) and record.start_time and now - record.start_time >= kafka.lease_s
    ]
    if not started:
        return SkipReason(f"no replay run has been running for over {kafka.lease_s:g} s")
    try:
        # Judged on a complete view only: a checkpoint hidden behind a dead replay's open
        # transaction would make a live run look silent.
        checkpoints = {(c.topic, c.day): c for c in kafka.checkpoints(complete_within_s=MARKER_WAIT_S)}
    except BrokerUnavailable as error:  # also CheckpointsIncomplete: judged at a later tick
        return SkipReason(f"could not read the replays' checkpoints: {error}")
    marked = []
    for record in started:
        run = record.dagster_run
        last_events = context.instance.get_records_for_run(run.run_id, ascending=False, limit=1).records
        last_event_at = last_events[0].event_log_entry.timestamp if last_events else record.start_time
        checkpoint = checkpoints.get((_replay_topic(run), run.tags.get("dagster/partition")))
        reason = abandoned_reason(
            checkpoint, run.run_id, now_ms=int(now * 1000), lease_s=kafka.lease_s, run_quiet_s=now - last_event_at
        )
        if reason is None:
            continue
        launched = GRPC_INFO_TAG in run.tags
        if not launched:
            # Run from a command line: the person who ran it decides whether it goes on.
            context.instance.add_run_tags(run.run_id, {WILL_RETRY_TAG: "false"})
        context.instance.report_run_failed(
            run,
            message=f"{REPLAY_WATCHDOG}: {reason}. Everything committed stays committed: re-execute the run "
            + ("(or let run retries do it) " if launched else "")
            + "to resume its replay from the last committed row.",
        )
        context.log.warning(f"marked run {run.run_id} failed: {reason}")
        marked.append(run.run_id[:8])
    alive = len(started) - len(marked)
    summary = f"{alive} replay run(s) alive" + (f"; marked failed: {', '.join(marked)}" if marked else "")
    return SkipReason(summary)
