"""Replay: publish one prepared day into Kafka, paced, and report exactly what was sent.

Thin wiring: pacing, encoding and the send loop are the pure modules ``pacing``,
``encoding`` and ``replay``; the broker is the ``KafkaResource``.
"""

from collections.abc import Iterator
from typing import Literal

import polars as pl
from dagster import (
    AssetExecutionContext,
    AssetObservation,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
    TableColumn,
    TableRecord,
    TableSchema,
    asset,
)
from pydantic import Field

from clickstream_dagster.assets.metadata import numeric
from clickstream_dagster.encoding import encode_messages, replay_headers
from clickstream_dagster.kafka_client import BrokerUnavailable
from clickstream_dagster.pacing import Pacing, PacingError, send_offsets
from clickstream_dagster.partitions import clickstream_days
from clickstream_dagster.replay import DeliveryError, ReplayProgress, progress_line, run_replay
from clickstream_dagster.resources.kafka import KafkaResource
from clickstream_dagster.topics import topic_name_problem, topic_name_warning

REPLAY_GROUP = "replay"
DEFAULT_TOPIC = "click-data"
REPLAY_POOL = "click_data_replay"

# Run tags every replay carries, so the runs list can be filtered by them.
TOPIC_TAG, PACING_TAG, DAY_TAG = "clickstream/topic", "clickstream/pacing", "clickstream/day"


class ReplayConfig(Config):
    topic: str = Field(default=DEFAULT_TOPIC, description="Kafka topic to publish to")
    pacing: Literal["original", "fixed", "max"] = Field(
        default="fixed", description="original: recorded gaps / speed; fixed: every interval_ms; max: no wait"
    )
    speed: float = Field(default=1.0, description="original pacing: divide the recorded gaps by this (> 0)")
    min_delay_s: float = Field(default=0.0, description="original pacing: shortest wait between messages")
    max_delay_s: float = Field(default=10.0, description="original pacing: longest wait between messages")
    interval_ms: float = Field(default=200.0, description="fixed pacing: milliseconds between messages")
    max_rate: float | None = Field(default=None, description="max pacing: cap in messages per second")
    limit: int | None = Field(default=None, description="send at most this many messages (smoke runs)")
    message_format: Literal["json", "quix"] = Field(
        default="json", description="json object, or quix: the Quix SDK's TimeseriesData envelope"
    )
    record_timestamp: Literal["replay", "original"] = Field(
        default="replay", description="Kafka record time: the send time, or the page view's own time"
    )
    allow_retention_deletes: bool = Field(
        default=False,
        description="record_timestamp=original: send even if the topic's retention.ms will delete the records",
    )
    dry_run: bool = Field(default=False, description="send nothing; report count and expected duration")

    def to_pacing(self) -> Pacing:
        return Pacing(
            mode=self.pacing,
            speed=self.speed,
            min_delay_s=self.min_delay_s,
            max_delay_s=self.max_delay_s,
            interval_ms=self.interval_ms,
            max_rate=self.max_rate,
        )


def _validated(config: ReplayConfig) -> Pacing:
    """Check values the type system cannot, before anything is sent (never retried)."""
    problems = []
    if topic_problem := topic_name_problem(config.topic):
        problems.append(topic_problem)
    if config.limit is not None and config.limit < 0:
        problems.append(f"limit={config.limit}: expected >= 0")
    try:
        pacing = config.to_pacing()
    except PacingError as error:
        problems.append(str(error))
    if problems:
        raise Failure("invalid replay config: " + "; ".join(problems), allow_retries=False)
    return pacing


def _offsets_table(progress: ReplayProgress) -> MetadataValue:
    schema = TableSchema(
        columns=[TableColumn("partition", "int"), TableColumn("first_offset", "int"), TableColumn("last_offset", "int")]
    )
    records = [
        TableRecord({"partition": p, "first_offset": first, "last_offset": last})
        for p, (first, last) in sorted(progress.offsets.items())
    ]
    return MetadataValue.table(records=records, schema=schema)


def _report(progress: ReplayProgress, pacing: Pacing) -> dict:
    figures = {
        "messages": progress.acked,
        "bytes": progress.acked_bytes,
        "duration_s": round(progress.elapsed_s, 3),
        "rate_msgs_per_s": round(progress.rate, 1),
    }
    if pacing.is_paced:
        figures |= {k: round(v, 3) for k, v in progress.lateness_ms().items()}
    return {**numeric(figures), "kafka_offsets": _offsets_table(progress)}


@asset(
    partitions_def=clickstream_days,
    group_name=REPLAY_GROUP,
    kinds={"kafka"},
    # One replay at a time, whatever launched it (dagster.yaml sets the pool's limit to 1).
    pool=REPLAY_POOL,
    # No RetryPolicy: a replay is not idempotent (a retry would send the day again).
    # A dry run sends nothing, so it materializes nothing (it logs an observation).
    output_required=False,
    description="One day of page views replayed into Kafka, keyed by userId, paced as configured.",
)
def click_data(
    context: AssetExecutionContext,
    config: ReplayConfig,
    kafka: KafkaResource,
    clickstream_events: pl.LazyFrame,
) -> Iterator[MaterializeResult]:
    pacing = _validated(config)
    day = context.partition_key
    context.instance.add_run_tags(
        context.run.run_id, {TOPIC_TAG: config.topic, PACING_TAG: config.pacing, DAY_TAG: day}
    )
    if name_warning := topic_name_warning(config.topic):
        context.log.warning(name_warning)
    events = clickstream_events.collect()
    day_rows = events.height  # the day's page views, before any limit
    if config.limit is not None:
        events = events.head(config.limit)
    offsets_s = send_offsets(events["original_timestamp"].to_numpy(), pacing)
    settings = {
        "topic": config.topic,
        "pacing": pacing.describe(),
        "message_format": config.message_format,
        "record_timestamp": config.record_timestamp,
    }
    if config.dry_run:
        expected = float(offsets_s[-1]) if len(offsets_s) else 0.0
        context.log.info(f"dry run: {events.height} messages would go to {config.topic!r}, {pacing.describe()}")
        context.log_event(
            AssetObservation(
                asset_key=context.asset_key,
                partition=day,
                metadata={
                    **settings,
                    **numeric({"dry_run_messages": events.height, "dry_run_expected_duration_s": round(expected, 3)}),
                },
            )
        )
        return

    if config.limit == 0:
        # Nothing to send, and nothing said about the day: not recorded as a replay.
        context.log.info(f"limit 0: nothing sent to {config.topic!r} ({day} has {day_rows} page views)")
        return
    # With original timestamps, a topic that would refuse or delete them fails the run here.
    oldest_s = events["original_timestamp"].min() if config.record_timestamp == "original" else None
    created = kafka.ensure_topic(
        config.topic,
        original_time_from_ms=oldest_s * 1000 if oldest_s is not None else None,
        allow_retention_deletes=config.allow_retention_deletes,
    )
    if events.height == 0:
        context.log.info(f"{day} has no page views: nothing to send")
        yield MaterializeResult(metadata={**settings, **numeric({"messages": 0}), "note": "empty day: 0 messages"})
        return

    messages = encode_messages(events, config.message_format)
    record_ts = (events["original_timestamp"] * 1000).to_list() if config.record_timestamp == "original" else None
    progress = ReplayProgress(total=len(messages))
    publisher = kafka.publisher(config.topic, replay_headers(day, context.run.run_id))
    context.log.info(
        f"replaying {len(messages)} page views of {day} into {config.topic!r} at "
        f"{kafka.bootstrap_servers} ({pacing.describe()}, {config.message_format})"
        + (" — topic created" if created else "")
    )
    try:
        run_replay(
            messages,
            offsets_s,
            publisher,
            record_timestamps_ms=record_ts,
            progress=progress,
            on_progress=lambda p: context.log.info(progress_line(p, offsets_s)),
        )
    except (DeliveryError, BrokerUnavailable) as error:
        raise Failure(
            f"replay of {day} into {config.topic!r} failed after {progress.acked} acknowledged messages: {error}",
            metadata=_report(progress, pacing),
            allow_retries=False,
        ) from error
    except BaseException:
        # Terminated from the UI (DagsterExecutionInterruptedError) or crashed: say how far it got.
        context.log.warning(f"replay of {day} stopped: {progress_line(progress, offsets_s)}")
        context.log_event(
            AssetObservation(asset_key=context.asset_key, partition=day, metadata={**settings, **_report(progress, pacing)})
        )
        raise
    finally:
        publisher.close()

    preview = [{"key": key.decode(), "value": value.decode()} for key, value in progress.first_messages]
    yield MaterializeResult(
        metadata={
            **settings,
            **_report(progress, pacing),
            "day_rows": MetadataValue.int(day_rows),
            "messages_planned": MetadataValue.int(events.height),
            "bootstrap_servers": kafka.bootstrap_servers,
            "preview": MetadataValue.json(preview),
        }
    )
