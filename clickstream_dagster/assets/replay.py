"""Replay: publish one prepared day into Kafka, paced, and report exactly what was sent.

Thin wiring: the replay's plan and session (validate, plan the day, encode, claim the topic,
find the resume point, run) are the plain-Python ``replay_plan``, over the pure modules
``pacing``, ``encoding`` and ``replay``; the broker is the ``KafkaResource``. Here: the config,
the run's tags and log, the step's failures and retries, and the metadata.
"""

import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from typing import Literal

import polars as pl
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetExecutionContext,
    AssetObservation,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
    RetryRequested,
    TableColumn,
    TableRecord,
    TableSchema,
    asset,
)
from pydantic import Field

from clickstream_dagster.assets.beta_features import partitioned_asset_check
from clickstream_dagster.assets.metadata import numeric
from clickstream_dagster.checkpoints import ReplayStatus
from clickstream_dagster.kafka_client import BrokerUnavailable, CheckpointsIncomplete
from clickstream_dagster.pacing import Pacing
from clickstream_dagster.partitions import clickstream_days
from clickstream_dagster.readback import verify_replay
from clickstream_dagster.replay import (
    CheckpointWriter,
    DeliveryError,
    Publisher,
    ReplayProgress,
    ReplayStopped,
    first_stop_signal_only,
    progress_line,
    tell_the_terminal,
)
from clickstream_dagster.replay_plan import (
    STEP_RETRIES,
    Boundary,
    InvalidReplayConfig,
    PlannedDay,
    ReplayRefused,
    ReplaySession,
    launcher_watch,
    plan_day,
    validated,
)
from clickstream_dagster.resources.kafka import KafkaResource
from clickstream_dagster.resources.schema_registry import RegistryError, SchemaRegistryResource
from clickstream_dagster.topics import topic_name_warning
from clickstream_dagster.typed_encoding import TYPED_FORMATS, packaged_decoder

REPLAY_GROUP = "replay"
DEFAULT_TOPIC = "click-data"

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
    message_format: Literal["json", "quix", "avro", "protobuf", "json_schema"] = Field(
        default="json",
        description="json object, or quix: the Quix SDK's TimeseriesData envelope; avro, protobuf, "
        "json_schema: typed records in the Confluent wire format, through the schema_registry resource",
    )
    record_timestamp: Literal["replay", "original"] = Field(
        default="replay", description="Kafka record time: the send time, or the page view's own time"
    )
    allow_retention_deletes: bool = Field(
        default=False,
        description="record_timestamp=original: send even if the topic's retention.ms will delete the records",
    )
    dry_run: bool = Field(default=False, description="send nothing; report count and expected duration")
    delivery: Literal["exactly_once", "at_least_once"] = Field(
        default="exactly_once",
        description="exactly_once: Kafka transactions, each row once for read_committed consumers; "
        "at_least_once: idempotent sends, no transactions (for clusters whose ACLs forbid them)",
    )
    resume: bool = Field(
        default=False,
        description="continue the last unfinished replay of this day into this topic (a re-execution always does)",
    )
    restart: bool = Field(
        default=False,
        description="replay the whole day even though its last replay into this topic did not finish "
        "(its committed rows arrive twice); without resume or restart such a launch fails, sending nothing",
    )
    wait_for_topic_s: float = Field(
        default=3600.0, description="while another replay holds the topic, wait this long, then fail naming it"
    )
    progress_interval_s: float = Field(default=60.0, description="a progress line at most this often")
    event_date: str = Field(
        default="recorded",
        description="move the day's page views to this date, time of day kept: recorded, today or YYYY-MM-DD",
    )
    visitor_epoch: int = Field(default=0, description="0: the recorded visitor ids; n: new ids, stable within epoch n")
    late_share: float = Field(default=0.0, description="share of page views sent late_by_s late, labelled 'late'")
    late_by_s: float = Field(
        default=60.0, description="a late page view is sent after the next late_by_s of the day's event time"
    )
    duplicate_share: float = Field(
        default=0.0, description="share of page views sent twice, byte for byte, the copy labelled 'duplicate'"
    )
    injection_seed: int | None = Field(
        default=None, description="which rows are late or duplicated (default: from the day and topic)"
    )
    after_run: str | None = Field(
        default=None,
        description="follow the replay of this run into the topic without a gap (the live feed sets it): "
        "wait for it to end, then send the first page view at its last one's due time plus the recorded gap",
    )

    def to_pacing(self) -> Pacing:
        return Pacing(
            mode=self.pacing,
            speed=self.speed,
            min_delay_s=self.min_delay_s,
            max_delay_s=self.max_delay_s,
            interval_ms=self.interval_ms,
            max_rate=self.max_rate,
        )


def _offsets_table(progress: ReplayProgress) -> MetadataValue:
    schema = TableSchema(
        columns=[TableColumn("partition", "int"), TableColumn("first_offset", "int"), TableColumn("last_offset", "int")]
    )
    records = [
        TableRecord({"partition": p, "first_offset": first, "last_offset": last})
        for p, (first, last) in sorted(progress.offsets.items())
    ]
    return MetadataValue.table(records=records, schema=schema)


def _report(progress: ReplayProgress, attempts: dict) -> dict:
    """The figures of this attempt, and of the run's attempts so far (``attempts``: this one's
    number and the run's stall before it, in ms): latencies count the stall."""
    stall_s = attempts["stall_ms"] / 1000
    figures = {
        "messages": progress.delivered,  # readable by a read_committed consumer, this attempt
        "attempts": attempts["attempt"],
        "stall_s": round(stall_s, 3),
        "acked": progress.acked,
        "bytes": progress.acked_bytes,
        "start_row": progress.start_row,
        "next_row": progress.next_row,
        "commits": progress.commits,
        "duration_s": round(progress.elapsed_s, 3),
        "rate_msgs_per_s": round(progress.rate, 1),
    }
    if progress.in_doubt:
        figures["in_doubt"] = progress.in_doubt
    figures |= {k: round(v, 3) for k, v in progress.figures_ms(stall_s).items()}
    return {**numeric(figures), "kafka_offsets": _offsets_table(progress)}


def _settings(planned: PlannedDay) -> dict:
    """The replay's settings as metadata: numbers as figures the UI plots, the rest as text."""
    return {k: v if isinstance(v, str) else numeric({k: v})[k] for k, v in planned.settings.items()}


def _preview_value(value: bytes, message_format: str) -> object:
    if message_format in TYPED_FORMATS:
        return packaged_decoder(message_format).decode(value)
    return value.decode()


def _follows(boundary: Boundary | None, progress: ReplayProgress) -> dict:
    """The silence a consumer saw between the replay followed and this one, against the recorded gap."""
    if boundary is None or not boundary.previous.last_sent_ms or not progress.first_sent_ns:
        return {}
    gap_s = (progress.first_sent_ns // 1_000_000 - boundary.previous.last_sent_ms) / 1000
    return {
        **numeric({"boundary_gap_s": round(gap_s, 3), "boundary_target_s": round(boundary.target_s, 3)}),
        "follows_run": boundary.previous.run_id,
    }


@contextlib.contextmanager
def _as_failures() -> Iterator[None]:
    """A replay refused before it sent anything fails the step: retried only if it may help."""
    try:
        yield
    except InvalidReplayConfig as invalid:
        raise Failure(str(invalid), allow_retries=False) from None
    except ReplayRefused as refused:
        raise Failure(str(refused), allow_retries=refused.retryable) from refused.__cause__


@asset(
    partitions_def=clickstream_days,
    group_name=REPLAY_GROUP,
    kinds={"kafka"},
    # A dry run sends nothing, so it materializes nothing (it logs an observation).
    output_required=False,
    description="One day of page views replayed into Kafka, keyed by userId, paced as configured, "
    "exactly once by default: every row once, in per-visitor order, resumable after any crash.",
)
def click_data(
    context: AssetExecutionContext,
    config: ReplayConfig,
    kafka: KafkaResource,
    schema_registry: SchemaRegistryResource,
    clickstream_events: pl.LazyFrame,
) -> Iterator[MaterializeResult]:
    day = context.partition_key
    with _as_failures():
        pacing = validated(config, day)
    context.instance.add_run_tags(
        context.run.run_id, {TOPIC_TAG: config.topic, PACING_TAG: config.pacing, DAY_TAG: day}
    )
    if name_warning := topic_name_warning(config.topic):
        context.log.warning(name_warning)
    planned = plan_day(config, day, pacing, clickstream_events.collect())
    settings, events = _settings(planned), planned.events
    if config.dry_run:
        context.log.info(f"dry run: {events.height} messages would go to {config.topic!r}, {pacing.describe()}")
        dry_run = {"dry_run_messages": events.height, "dry_run_expected_duration_s": round(planned.expected_duration_s, 3)}
        context.log_event(AssetObservation(asset_key=context.asset_key, partition=day, metadata={**settings, **numeric(dry_run)}))
        return
    if config.limit == 0:
        # Nothing to send, and nothing said about the day: not recorded as a replay.
        context.log.info(f"limit 0: nothing sent to {config.topic!r} ({day} has {planned.day_rows} page views)")
        return
    session = ReplaySession(
        config, day, pacing, planned, kafka,
        run_id=context.run.run_id,
        # Re-executions, step retries and run retries share the root run's id: they resume its replay.
        replay_id=context.run.root_run_id or context.run.run_id,
        retry_number=context.retry_number,
        info=context.log.info,
        warning=context.log.warning,
    )
    with _as_failures():
        messages = session.encode(schema_registry)
        created = session.ensure_topic()
    if events.height == 0:
        context.log.info(f"{day} has no page views: nothing to send")
        yield MaterializeResult(metadata={**settings, **numeric({"messages": 0}), "note": "empty day: 0 messages"})
        return
    with _as_failures():
        # Also in a retry or re-execution: one that crashed while waiting must not start sooner
        # (and once the previous replay finished, this returns at once).
        previous = session.wait_for_previous(_run_ended(context)) if config.after_run else None
        publisher, checkpoint = session.claim()
    session.follow(previous)
    publisher = session.labelled(publisher)
    plan, progress = session.plan, session.progress
    if plan.resumed is not None:
        context.log.info(f"resuming at row {plan.start_row}/{len(messages)}: {plan.resumed.describe(time.time_ns() // 1_000_000)}")
    context.log.info(
        f"replaying rows {plan.start_row}..{len(messages)} of {day} ({events.height} page views) into "
        f"{config.topic!r} at {kafka.bootstrap_servers} ({pacing.describe()}, {config.message_format}, "
        f"{config.delivery})" + (" — topic created" if created else "")
    )
    _run(context, session, publisher, checkpoint, settings)

    context.log.info(progress_line(progress, planned.offsets_s))
    preview = [
        {"key": key.decode(), "value": _preview_value(value, config.message_format)}
        for key, value in progress.first_messages
    ]
    resumed = {"resumed_from_run": plan.resumed.run_id} if plan.resumed is not None else {}
    yield MaterializeResult(
        metadata={
            **settings,
            **_report(progress, session.attempts),
            **resumed,
            **_follows(session.boundary, progress),
            "replay_id": session.replay_id,
            "day_rows": MetadataValue.int(planned.day_rows),
            "messages_planned": MetadataValue.int(events.height),
            "bootstrap_servers": kafka.bootstrap_servers,
            "preview": MetadataValue.json(preview),
            **({"duplicates_reencoded": MetadataValue.int(messages.reencoded)} if getattr(messages, "reencoded", 0) else {}),
        }
    )


def _run_ended(context: AssetExecutionContext) -> Callable[[str], bool]:
    def run_ended(run_id: str) -> bool:
        run = context.instance.get_run_by_id(run_id)
        return run is None or run.is_finished

    return run_ended


def _run(
    context: AssetExecutionContext, session: ReplaySession, publisher: Publisher, checkpoint: CheckpointWriter, settings: dict
) -> None:
    """The send loop, its failures as the step's: a transient one retried, the rest failing the
    run; a cancelled or crashed one logging how far it got."""
    day, progress, offsets_s = session.day, session.progress, session.planned.offsets_s
    # Ctrl-C signals the step twice (the terminal, then Dagster forwarding it): the second must
    # not cut the first one's stop short.
    closing_s = session.kafka.close_timeout_s
    with first_stop_signal_only() as stop_signal:
        try:
            on_progress = lambda p: context.log.info(progress_line(p, offsets_s))  # noqa: E731
            session.run(publisher, checkpoint, on_progress=on_progress, should_stop=launcher_watch())
        except (DeliveryError, BrokerUnavailable, ReplayStopped) as caught:
            message, error, retry_in_s = session.failed(caught)
            closing_s = 0.0  # the replay aborted and flushed already: nothing left worth waiting for
            if retry_in_s is not None:
                context.log.warning(
                    f"{message} The cluster answers: retrying in {retry_in_s} s as attempt {context.retry_number + 2} "
                    f"of {STEP_RETRIES + 1}, from row {progress.next_row}."
                )
                raise RetryRequested(max_retries=STEP_RETRIES, seconds_to_wait=retry_in_s) from error
            raise Failure(
                f"{message} Re-execute the run (or launch with resume: true) to continue from there.",
                metadata={**settings, **_report(progress, session.attempts)},
                allow_retries=False,
            ) from error
        except BaseException:
            # Terminated from the UI (DagsterExecutionInterruptedError) or crashed: say how far it got.
            stop_line = f"replay of {day} stopped: {progress_line(progress, offsets_s)}"
            context.log.warning(stop_line)
            if stop_signal.signum == signal.SIGINT:  # Ctrl-C: answer on the terminal it came from
                tell_the_terminal(stop_line)
            context.log_event(
                AssetObservation(
                    asset_key=context.asset_key, partition=day, metadata={**settings, **_report(progress, session.attempts)}
                )
            )
            raise
        finally:
            publisher.close(closing_s)


@partitioned_asset_check(
    asset=click_data,
    partitions_def=clickstream_days,
    blocking=False,
    description="Reads the replay back from Kafka (read_committed) and confirms that every row it sent "
    "is there exactly once, each visitor's page views in their original order.",
)
def delivered_exactly_once(
    context: AssetCheckExecutionContext, kafka: KafkaResource, schema_registry: SchemaRegistryResource
) -> AssetCheckResult:
    day = context.partition_key
    run = context.instance.get_run_by_id(context.run.run_id)
    topic = run.tags.get(TOPIC_TAG, DEFAULT_TOPIC)
    replay_id = run.root_run_id or run.run_id
    try:
        # A dead replay's open transaction can hide the checkpoint for a while: wait it out.
        checkpoints = kafka.checkpoints(complete_within_s=kafka.open_transaction_bound_s)
    except CheckpointsIncomplete as error:
        return AssetCheckResult(passed=False, metadata={"reason": f"could not read the checkpoints: {error}"})
    mine = [c for c in checkpoints if c.topic == topic and c.day == day and c.replay_id == replay_id]
    if not mine or mine[0].status != ReplayStatus.FINISHED:
        state = mine[0].describe(time.time_ns() // 1_000_000) if mine else "no checkpoint"
        return AssetCheckResult(passed=False, metadata={"reason": f"the replay did not finish: {state}"})
    checkpoint = mine[0]
    records = kafka.read_back(topic, dict(checkpoint.start_offsets))
    try:
        found = verify_replay(
            ((r.partition, r.offset, r.key, dict(r.headers or ()), r.value) for r in records),
            day=day,
            run_ids=checkpoint.run_ids,
            expected_rows=checkpoint.next_row,
            typed=schema_registry.decoder(),
        )
    except RegistryError as error:
        return AssetCheckResult(passed=False, metadata={"reason": f"could not decode the records: {error}"})
    return AssetCheckResult(
        passed=found.passed,
        metadata={
            "topic": topic,
            **numeric(
                {
                    "expected_rows": found.expected,
                    "messages_found": found.found,
                    "duplicates": found.duplicates,
                    "missing": found.missing,
                    "out_of_order_visitors": found.out_of_order_keys,
                    "undecodable": found.undecodable,
                    "injected_duplicates": found.injected_duplicates,
                    "injected_late": found.injected_late,
                }
            ),
            "runs": ", ".join(checkpoint.run_ids),
        },
    )
