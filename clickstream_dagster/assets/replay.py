"""Replay: publish one prepared day into Kafka, paced, and report exactly what was sent.

Thin wiring: pacing, encoding and the send loop are the pure modules ``pacing``,
``encoding`` and ``replay``; the broker is the ``KafkaResource``.
"""

import datetime as dt
import math
import os
import random
import signal
import socket
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
from clickstream_dagster.encoding import EncodedMessages, encode_messages, replay_headers
from clickstream_dagster.checkpoints import (
    Checkpoint,
    ReplayPlan,
    ReplayStatus,
    TopicBusy,
    UnfinishedReplay,
    next_attempt,
    plan_replay,
    previous_replay,
    transactional_id,
)
from clickstream_dagster.event_time import EventTimeError, as_of, check_epoch, shift_days
from clickstream_dagster.injection import (
    INJECTED_HEADER,
    DuplicatesAsSent,
    InjectionPlan,
    LabelledPublisher,
    check_settings,
    default_seed,
    originals_to_recover,
    plan_injection,
    recover_sent,
)
from clickstream_dagster.kafka_client import BrokerUnavailable, CheckpointsIncomplete, KafkaPublisher, NotAuthorized, TopicUnfit
from clickstream_dagster.pacing import Pacing, PacingError, boundary_start_ms, send_offsets
from clickstream_dagster.partitions import clickstream_days
from clickstream_dagster.readback import verify_replay
from clickstream_dagster.replay import (
    CheckpointWriter,
    DeliveryError,
    ProducerFenced,
    ReplayProgress,
    ReplayStopped,
    ReplayTiming,
    first_stop_signal_only,
    tell_the_terminal,
    progress_line,
    run_replay,
)
from clickstream_dagster.resources.kafka import KafkaResource
from clickstream_dagster.resources.schema_registry import RegistryError, SchemaRegistryResource
from clickstream_dagster.typed_encoding import TYPED_FORMATS, packaged_decoder
from clickstream_dagster.topics import topic_name_problem, topic_name_warning

REPLAY_GROUP = "replay"
DEFAULT_TOPIC = "click-data"

# A broker error mid-replay is retried this often (with backoff), each retry resuming at the checkpoint.
STEP_RETRIES = 2

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


def _validated(config: ReplayConfig, day: str) -> Pacing:
    """Check values the type system cannot, before anything is sent (never retried)."""
    problems = []
    if topic_problem := topic_name_problem(config.topic):
        problems.append(topic_problem)
    for name in ("wait_for_topic_s", "progress_interval_s"):
        value = getattr(config, name)
        if not (math.isfinite(value) and value >= 0):
            problems.append(f"{name}={value!r}: expected a number >= 0")
    if config.resume and config.restart:
        problems.append("resume and restart are both true: choose one")
    if config.limit is not None and config.limit < 0:
        problems.append(f"limit={config.limit}: expected >= 0")
    problems += check_settings(config.late_share, config.late_by_s, config.duplicate_share)
    try:
        shift_days(day, config.event_date)
        check_epoch(config.visitor_epoch)
    except EventTimeError as error:
        problems.append(str(error))
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


def _plan(kafka: KafkaResource, config: ReplayConfig, day: str, replay_id: str) -> ReplayPlan:
    """Where this replay starts; ``TopicBusy`` while another live replay holds the topic."""
    return plan_replay(
        kafka.checkpoints(),
        topic=config.topic,
        day=day,
        replay_id=replay_id,
        resume=config.resume,
        restart=config.restart,
        now_ms=time.time_ns() // 1_000_000,
        lease_s=kafka.lease_s,
    )


def _wait_for_topic(context: AssetExecutionContext, kafka: KafkaResource, config: ReplayConfig, replay_id: str) -> None:
    """Return once no other live replay holds the topic; fail naming it after wait_for_topic_s."""
    began, last_said = time.monotonic(), -math.inf
    while True:
        try:
            _plan(kafka, config, context.partition_key, replay_id)
            return
        except TopicBusy as busy:
            waited = time.monotonic() - began
            if waited >= config.wait_for_topic_s:
                raise Failure(
                    f"{busy}; gave up after waiting {waited:.0f} s (wait_for_topic_s). Replays into one topic "
                    "never interleave: wait for that one, or replay into another topic.",
                    allow_retries=False,
                ) from busy
            if time.monotonic() - last_said >= 30:
                context.log.info(f"waiting for the topic: {busy}")
                last_said = time.monotonic()
            time.sleep(1.0 + random.random())


def _wait_for_previous(
    context: AssetExecutionContext, kafka: KafkaResource, config: ReplayConfig
) -> Checkpoint | None:
    """Wait, with no producer of our own (starting one would fence it), until the replay of run
    ``after_run`` into the topic has finished, or the run has ended; return its finished
    checkpoint (None: it ended without finishing). A stopped replay may be retried within its run:
    waited for too. Polls often only near the end its checkpoint announces, so the next day starts
    in time."""
    last_said = -math.inf
    orphaned = _launcher_watch()
    while True:
        run = context.instance.get_run_by_id(config.after_run)
        ended = run is None or run.is_finished  # read before the checkpoints: they are then final
        previous = previous_replay(kafka.checkpoints(), config.topic, config.after_run)
        if previous is not None and previous.status == ReplayStatus.FINISHED:
            return previous
        if ended:
            return None  # the topic's lease decides when this replay may start
        if reason := orphaned():
            raise Failure(f"waiting for run {config.after_run[:8]}: {reason}", allow_retries=False)
        if time.monotonic() - last_said >= 60:
            state = previous.describe(time.time_ns() // 1_000_000) if previous else "not sending yet"
            context.log.info(f"waiting for run {config.after_run[:8]} to end before following it: {state}")
            last_said = time.monotonic()
        if previous is None or not previous.last_due_ms:  # not sending yet
            time.sleep(1.0)
        else:
            to_end_s = (previous.last_due_ms - time.time_ns() // 1_000_000) / 1000
            time.sleep(min(max(to_end_s - 3.0, 0.05), 2.0))


def _starting_failure(context: AssetExecutionContext, config: ReplayConfig, error: BaseException) -> Failure:
    """A failure before anything was sent: the cluster or the topic, named, never retried."""
    retried = (
        f" (retry {context.retry_number} of {STEP_RETRIES}: the earlier attempts' reports are in this run's log, "
        "and every row they committed stays committed: re-execute the run to resume)"
        if context.retry_number
        else ""
    )
    return Failure(f"replay of {context.partition_key} into {config.topic!r}: {error}{retried}", allow_retries=False)


def _encoded(
    context: AssetExecutionContext, config: ReplayConfig, events: pl.DataFrame, schema_registry: SchemaRegistryResource
) -> EncodedMessages:
    """The day's messages, encoded in bulk before the clock starts. A typed format asks the
    registry once for its schema id: a registry that cannot give one fails the run here,
    before the topic is touched."""
    if config.message_format not in TYPED_FORMATS:
        return encode_messages(events, config.message_format)
    began = time.perf_counter()
    try:
        messages = schema_registry.encode(events, config.topic, config.message_format)
    except RegistryError as error:
        raise _starting_failure(context, config, error) from error
    context.log.info(f"{len(messages)} {config.message_format} messages serialized in {time.perf_counter() - began:.3f} s")
    return messages


def _preview_value(value: bytes, message_format: str) -> object:
    if message_format in TYPED_FORMATS:
        return packaged_decoder(message_format).decode(value)
    return value.decode()


def _launcher_watch() -> Callable[[], str | None]:
    """A reason to stop once the process that launched this step is gone (re-parented):
    an orphaned step must not go on sending on its own."""
    parent = os.getppid()

    def orphaned() -> str | None:
        if os.getppid() != parent:
            return f"the process that launched this step (pid {parent}) exited; stopping"
        return None

    return orphaned


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
    pacing = _validated(config, day)
    context.instance.add_run_tags(
        context.run.run_id, {TOPIC_TAG: config.topic, PACING_TAG: config.pacing, DAY_TAG: day}
    )
    if name_warning := topic_name_warning(config.topic):
        context.log.warning(name_warning)
    events = clickstream_events.collect()
    day_rows = events.height  # the day's page views, before any limit
    if config.limit is not None:
        events = events.head(config.limit)
    shift = shift_days(day, config.event_date)
    events = as_of(events, days=shift, visitor_epoch=config.visitor_epoch)
    # The planned stream: the day's rows, plus labelled late and duplicate ones if asked.
    injection = plan_injection(
        events["original_timestamp"].to_numpy(),
        late_share=config.late_share,
        late_by_s=config.late_by_s,
        duplicate_share=config.duplicate_share,
        seed=config.injection_seed if config.injection_seed is not None else default_seed(day, config.topic),
    )
    events = events[injection.rows.tolist()]
    offsets_s = send_offsets(injection.times_s, pacing)
    settings = {
        "topic": config.topic,
        "pacing": pacing.describe(),
        "delivery": config.delivery,
        "message_format": config.message_format,
        "record_timestamp": config.record_timestamp,
        "event_date": (dt.date.fromisoformat(day) + dt.timedelta(days=shift)).isoformat(),
        **numeric({"event_date_shift_days": shift, "visitor_epoch": config.visitor_epoch}),
        **numeric({"late_messages": injection.late, "duplicate_messages": injection.duplicates}),
    }
    if injection.late or injection.duplicates:
        settings["injection_seed"] = str(injection.seed)
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
    messages = _encoded(context, config, events, schema_registry)
    if injection.duplicates:
        messages = DuplicatesAsSent(messages, injection.original_of)
    # With original timestamps, a topic that would refuse or delete them fails the run here.
    oldest_s = events["original_timestamp"].min() if config.record_timestamp == "original" else None
    try:
        created = kafka.ensure_topic(
            config.topic,
            original_time_from_ms=oldest_s * 1000 if oldest_s is not None else None,
            allow_retention_deletes=config.allow_retention_deletes,
        )
    except (BrokerUnavailable, TopicUnfit) as error:
        raise _starting_failure(context, config, error) from error
    if events.height == 0:
        context.log.info(f"{day} has no page views: nothing to send")
        yield MaterializeResult(metadata={**settings, **numeric({"messages": 0}), "note": "empty day: 0 messages"})
        return

    # Re-executions, step retries and run retries share the root run's id: they resume its replay.
    replay_id = context.run.root_run_id or context.run.run_id
    exactly_once = config.delivery == "exactly_once"
    owner = f"{socket.gethostname()} pid {os.getpid()}"
    record_ts = (events["original_timestamp"] * 1000).to_list() if config.record_timestamp == "original" else None

    # This attempt's number in the run and the run's stall so far: set when the topic is claimed.
    attempts = {"attempt": 1, "stall_ms": 0}
    # Where its schedule ends goes into the checkpoints, for a replay following this one.
    progress = ReplayProgress(total=len(messages))
    last_event_ms = round(float(injection.times_s[-1]) * 1000)

    def writer_for(plan: ReplayPlan, end_offsets: Callable[[], dict[int, int]]) -> CheckpointWriter:
        """Checkpoints of this replay: a resumed one keeps where it began and who wrote it, and
        an earlier attempt of this run what it went through."""
        resumed = plan.resumed
        if resumed is not None and resumed.start_offsets:
            start_offsets = resumed.start_offsets
            run_ids = tuple(dict.fromkeys((*resumed.run_ids, context.run.run_id)))
        else:
            start_offsets, run_ids = tuple(sorted(end_offsets().items())), (context.run.run_id,)
        now_ms = time.time_ns() // 1_000_000
        attempts["attempt"], attempts["stall_ms"] = next_attempt(resumed, context.run.run_id, now_ms)
        delivered = {"next_row": plan.start_row, "at_ms": now_ms}

        def checkpoint(next_row: int, status: ReplayStatus) -> tuple[bytes, bytes]:
            now_ms = time.time_ns() // 1_000_000
            if next_row > delivered["next_row"]:
                delivered.update(next_row=next_row, at_ms=now_ms)
            record = Checkpoint(
                topic=config.topic,
                day=day,
                replay_id=replay_id,
                run_id=context.run.run_id,
                next_row=next_row,
                total=len(messages),
                status=status,
                heartbeat_ms=now_ms,
                owner=owner,
                start_offsets=start_offsets,
                run_ids=run_ids,
                attempt=attempts["attempt"],
                stall_ms=attempts["stall_ms"],
                progress_ms=delivered["at_ms"],
                last_due_ms=progress.last_due_ns // 1_000_000,
                last_sent_ms=progress.last_sent_ns // 1_000_000 if status == ReplayStatus.FINISHED else 0,
                last_event_ms=last_event_ms,
            )
            return record.key, record.to_bytes()

        return checkpoint

    previous = None
    if config.after_run:
        # Also in a retry or re-execution: one that crashed while waiting must not start sooner
        # (and once the previous replay finished, this returns at once).
        try:
            previous = _wait_for_previous(context, kafka, config)
        except BrokerUnavailable as error:
            raise _starting_failure(context, config, error) from error
    publisher, plan, checkpoint = _claim_topic(context, kafka, config, replay_id, writer_for, exactly_once)
    # Following another replay: the first page view is due at its last one's due time plus the
    # recorded gap (a fresh start only: a resumed replay keeps going at once).
    start_delay_s, boundary = 0.0, {}
    if previous is not None and previous.last_due_ms and plan.resumed is None:
        now_ms = time.time_ns() // 1_000_000
        start_ms, target_s = boundary_start_ms(
            previous.last_due_ms, previous.last_event_ms / 1000, float(injection.times_s[0]), pacing, now_ms
        )
        start_delay_s = (start_ms - now_ms) / 1000
        boundary = {"previous": previous, "target_s": target_s}
    if injection.late or injection.duplicates:
        publisher = LabelledPublisher(publisher, injection.labels, plan.start_row)
    if injection.duplicates and plan.resumed is not None:
        _recover_originals(context, kafka, config, injection, messages, plan)
    progress.start_row = plan.start_row
    if plan.resumed is not None:
        context.log.info(f"resuming at row {plan.start_row}/{len(messages)}: {plan.resumed.describe(time.time_ns() // 1_000_000)}")
    context.log.info(
        f"replaying rows {plan.start_row}..{len(messages)} of {day} ({events.height} page views) into "
        f"{config.topic!r} at {kafka.bootstrap_servers} ({pacing.describe()}, {config.message_format}, "
        f"{config.delivery})" + (" — topic created" if created else "")
    )
    # Ctrl-C signals the step twice (the terminal, then Dagster forwarding it): the second must
    # not cut the first one's stop short.
    closing_s = kafka.close_timeout_s
    with first_stop_signal_only() as stop_signal:
        try:
            run_replay(
                messages,
                offsets_s,
                publisher,
                start_row=plan.start_row,
                checkpoint=checkpoint,
                record_timestamps_ms=record_ts,
                progress=progress,
                on_progress=lambda p: context.log.info(progress_line(p, offsets_s)),
                should_stop=_launcher_watch(),
                paced=pacing.is_paced,
                start_delay_s=start_delay_s,
                timing=ReplayTiming(progress_every_s=config.progress_interval_s, delivery_timeout_s=kafka.delivery_timeout_s),
            )
        except (DeliveryError, BrokerUnavailable, ReplayStopped) as caught:
            # A message the broker refused for a missing ACL: say which, and do not retry.
            error = caught
            if not isinstance(caught, NotAuthorized):
                error = kafka.settings().not_authorized(caught, f"sending to {config.topic!r}") or caught
            doubt = f", {progress.in_doubt} more in a commit the broker never confirmed" if progress.in_doubt else ""
            message = (
                f"replay of {day} into {config.topic!r} at {kafka.bootstrap_servers} failed: {error}. "
                f"{progress.delivered} messages delivered by this attempt ({progress.acked} acknowledged{doubt}); "
                f"committed through row {progress.next_row} of {len(messages)}."
            )
            closing_s = 0.0  # the replay aborted and flushed already: nothing left worth waiting for
            transient = not isinstance(error, ReplayStopped | ProducerFenced | NotAuthorized)
            if transient and context.retry_number < STEP_RETRIES:
                # Retry only a cluster that answers again, asked for what is left of connect_timeout_s
                # after the stop itself: a dead one fails the run within delivery + connect timeouts.
                gone = kafka.unreachable(config.topic, kafka.connect_timeout_s - progress.cleanup_s)
                if gone is None:
                    # Safe since checkpoints: the retry resumes from the last committed row.
                    wait_s = 5 * 2**context.retry_number
                    context.log.warning(
                        f"{message} The cluster answers: retrying in {wait_s} s as attempt {context.retry_number + 2} "
                        f"of {STEP_RETRIES + 1}, from row {progress.next_row}."
                    )
                    raise RetryRequested(max_retries=STEP_RETRIES, seconds_to_wait=wait_s) from error
                message += f" Not retried: {gone}."
            raise Failure(
                f"{message} Re-execute the run (or launch with resume: true) to continue from there.",
                metadata={**settings, **_report(progress, attempts)},
                allow_retries=False,
            ) from error
        except BaseException:
            # Terminated from the UI (DagsterExecutionInterruptedError) or crashed: say how far it got.
            stop_line = f"replay of {day} stopped: {progress_line(progress, offsets_s)}"
            context.log.warning(stop_line)
            if stop_signal.signum == signal.SIGINT:  # Ctrl-C: answer on the terminal it came from
                tell_the_terminal(stop_line)
            context.log_event(
                AssetObservation(asset_key=context.asset_key, partition=day, metadata={**settings, **_report(progress, attempts)})
            )
            raise
        finally:
            publisher.close(closing_s)

    context.log.info(progress_line(progress, offsets_s))
    preview = [
        {"key": key.decode(), "value": _preview_value(value, config.message_format)}
        for key, value in progress.first_messages
    ]
    resumed = {"resumed_from_run": plan.resumed.run_id} if plan.resumed is not None else {}
    follows = {}
    if boundary and boundary["previous"].last_sent_ms and progress.first_sent_ns:
        # The silence a consumer saw between the two replays, against the recorded gap.
        gap_s = (progress.first_sent_ns // 1_000_000 - boundary["previous"].last_sent_ms) / 1000
        follows = {
            **numeric(
                {"boundary_gap_s": round(gap_s, 3), "boundary_target_s": round(boundary["target_s"], 3)}
            ),
            "follows_run": boundary["previous"].run_id,
        }
    yield MaterializeResult(
        metadata={
            **settings,
            **_report(progress, attempts),
            **resumed,
            **follows,
            "replay_id": replay_id,
            "day_rows": MetadataValue.int(day_rows),
            "messages_planned": MetadataValue.int(events.height),
            "bootstrap_servers": kafka.bootstrap_servers,
            "preview": MetadataValue.json(preview),
            **({"duplicates_reencoded": MetadataValue.int(messages.reencoded)} if getattr(messages, "reencoded", 0) else {}),
        }
    )


def _recover_originals(
    context: AssetExecutionContext,
    kafka: KafkaResource,
    config: ReplayConfig,
    injection: InjectionPlan,
    messages: DuplicatesAsSent,
    plan: ReplayPlan,
) -> None:
    """A resumed replay re-sends the duplicates still due byte for byte as their originals went
    out in an earlier attempt: those bytes are read back from the topic."""
    wanted = originals_to_recover(injection, plan.start_row)
    if not wanted:
        return
    resumed = plan.resumed
    runs = {run_id.encode() for run_id in (*resumed.run_ids, context.run.run_id)}
    day = context.partition_key.encode()
    records = kafka.read_back(config.topic, dict(resumed.start_offsets))
    mine = (
        (r.key, headers.get(INJECTED_HEADER), r.value)
        for r in sorted(records, key=lambda r: (r.partition, r.offset))
        if (headers := dict(r.headers or ())).get("source_day") == day and headers.get("dagster_run_id") in runs
    )
    messages.sent |= recover_sent(injection, messages.keys, plan.start_row, mine)
    if missing := len(wanted - messages.sent.keys()):
        context.log.warning(
            f"{missing} of the {len(wanted)} originals sent before the resume were not found in "
            f"{config.topic!r}: their duplicates are encoded again, with this attempt's send time"
        )


def _claim_topic(
    context: AssetExecutionContext,
    kafka: KafkaResource,
    config: ReplayConfig,
    replay_id: str,
    writer_for: Callable[[ReplayPlan, Callable[[], dict[int, int]]], CheckpointWriter],
    exactly_once: bool,
) -> tuple[KafkaPublisher, ReplayPlan, CheckpointWriter]:
    """Wait for the topic, start a producer, plan from what is committed now, and claim.

    With exactly_once the producer's start fences every earlier one of this topic, so the
    checkpoints read after it are final: a zombie of an earlier attempt can commit nothing
    more. Two replays that found the topic free at the same moment: the one that then sees
    the other's live claim backs off before sending anything, and waits again."""
    day = context.partition_key
    while True:
        try:
            _wait_for_topic(context, kafka, config, replay_id)
        except (BrokerUnavailable, UnfinishedReplay) as error:
            raise _starting_failure(context, config, error) from error
        try:
            publisher = kafka.publisher(
                config.topic,
                replay_headers(day, context.run.run_id),
                transactional_id=transactional_id(config.topic) if exactly_once else None,
            )
        except BrokerUnavailable as error:
            raise _starting_failure(context, config, error) from error
        try:
            plan = _plan(kafka, config, day, replay_id)
            checkpoint = writer_for(plan, lambda: kafka.end_offsets(config.topic))
            publisher.commit(*checkpoint(plan.start_row, ReplayStatus.RUNNING), kafka.delivery_timeout_s)
            publisher.flush(kafka.delivery_timeout_s)
            return publisher, plan, checkpoint
        except TopicBusy as busy:
            publisher.close()
            context.log.info(f"another replay claimed the topic at the same moment; backing off: {busy}")
        except UnfinishedReplay as error:  # another launch left the day unfinished meanwhile
            publisher.close()
            raise _starting_failure(context, config, error) from error
        except (DeliveryError, BrokerUnavailable) as error:
            publisher.close()
            raise Failure(
                f"replay of {day} into {config.topic!r} could not claim the topic: {error}",
                allow_retries=not isinstance(error, ProducerFenced | NotAuthorized),
            ) from error


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
