"""One replay of a day into a topic, from its settings to its send loop: below the Dagster layer.

``plan_day`` turns a day's page views and the replay's settings into what will be sent (the
limit, the event date, late and duplicate rows, the schedule); a ``ReplaySession`` then does
what touches the cluster, in order: encode, make sure of the topic, wait for the replay it
follows, claim the topic (which finds the resume point) and run. The ``click_data`` asset
reads its config, calls these, and reports what they return as Dagster metadata.

The cluster and the schema registry are duck-typed (``ReplayCluster``, ``MessageEncoder``):
the Dagster resources in a run, fakes in unit tests.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import polars as pl

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
from clickstream_dagster.encoding import EncodedMessages, encode_messages, replay_headers
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
from clickstream_dagster.kafka_client import BrokerUnavailable, NotAuthorized, TopicUnfit
from clickstream_dagster.pacing import Pacing, PacingError, boundary_start_ms, send_offsets
from clickstream_dagster.replay import (
    CheckpointWriter,
    DeliveryError,
    ProducerFenced,
    Publisher,
    ReplayProgress,
    ReplayStopped,
    ReplayTiming,
    run_replay,
)
from clickstream_dagster.schema_registry import RegistryError
from clickstream_dagster.topics import topic_name_problem
from clickstream_dagster.typed_encoding import TYPED_FORMATS

# A broker error mid-replay is retried this often (with backoff), each retry resuming at the checkpoint.
STEP_RETRIES = 2


class ReplaySettings(Protocol):
    """What a replay is asked to do: the fields of the asset's ``ReplayConfig`` read here."""

    topic: str
    pacing: str
    limit: int | None
    message_format: str
    record_timestamp: str
    allow_retention_deletes: bool
    delivery: str
    resume: bool
    restart: bool
    wait_for_topic_s: float
    progress_interval_s: float
    event_date: str
    visitor_epoch: int
    late_share: float
    late_by_s: float
    duplicate_share: float
    injection_seed: int | None
    after_run: str | None

    def to_pacing(self) -> Pacing: ...


class ReplayCluster(Protocol):
    """The Kafka cluster as a replay uses it (``resources.kafka.KafkaResource``)."""

    bootstrap_servers: str
    delivery_timeout_s: float
    connect_timeout_s: float

    @property
    def lease_s(self) -> float: ...

    def checkpoints(self) -> list[Checkpoint]: ...

    def ensure_topic(self, topic: str, *, original_time_from_ms: int | None, allow_retention_deletes: bool) -> bool: ...

    def end_offsets(self, topic: str) -> dict[int, int]: ...

    def read_back(self, topic: str, start_offsets: dict[int, int]) -> list: ...

    def publisher(self, topic: str, headers: list[tuple[str, bytes]], transactional_id: str | None) -> Publisher: ...

    def unreachable(self, topic: str, timeout_s: float) -> BrokerUnavailable | None: ...

    def settings(self) -> Any: ...  # KafkaSettings: .not_authorized(error, doing)


class MessageEncoder(Protocol):
    """Typed formats' encoder (``resources.schema_registry.SchemaRegistryResource``)."""

    def encode(self, events: pl.DataFrame, topic: str, message_format: str) -> EncodedMessages: ...


class InvalidReplayConfig(ValueError):
    """Values the type system cannot check are wrong: the replay sends nothing, and is never retried."""

    def __init__(self, problems: list[str]):
        super().__init__("invalid replay config: " + "; ".join(problems))
        self.problems = problems


class ReplayRefused(RuntimeError):
    """The replay could not start (the cluster, the topic, the registry, another replay): the
    message names why; ``retryable``: whether retrying the step may help."""

    def __init__(self, message: str, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


def validated(config: ReplaySettings, day: str) -> Pacing:
    """Check values the type system cannot, before anything is sent; the pacing they describe."""
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
        raise InvalidReplayConfig(problems)
    return pacing


@dataclass
class PlannedDay:
    """What a replay of the day will send, before anything is encoded."""

    events: pl.DataFrame  # the rows in send order, late and duplicate ones included
    day_rows: int  # the day's page views, before any limit
    shift_days: int  # how far the event date moved
    injection: InjectionPlan
    offsets_s: np.ndarray  # when each row is due after the first
    settings: dict[str, str | int]  # the replay's settings, for the run's metadata

    @property
    def expected_duration_s(self) -> float:
        return float(self.offsets_s[-1]) if len(self.offsets_s) else 0.0


def plan_day(config: ReplaySettings, day: str, pacing: Pacing, events: pl.DataFrame) -> PlannedDay:
    """The day's rows as they will go out: limited, moved to the event date, with labelled late
    and duplicate rows if asked, and each one's due time."""
    day_rows = events.height
    if config.limit is not None:
        events = events.head(config.limit)
    shift = shift_days(day, config.event_date)
    events = as_of(events, days=shift, visitor_epoch=config.visitor_epoch)
    injection = plan_injection(
        events["original_timestamp"].to_numpy(),
        late_share=config.late_share,
        late_by_s=config.late_by_s,
        duplicate_share=config.duplicate_share,
        seed=config.injection_seed if config.injection_seed is not None else default_seed(day, config.topic),
    )
    events = events[injection.rows.tolist()]
    settings: dict[str, str | int] = {
        "topic": config.topic,
        "pacing": pacing.describe(),
        "delivery": config.delivery,
        "message_format": config.message_format,
        "record_timestamp": config.record_timestamp,
        "event_date": (dt.date.fromisoformat(day) + dt.timedelta(days=shift)).isoformat(),
        "event_date_shift_days": shift,
        "visitor_epoch": config.visitor_epoch,
        "late_messages": injection.late,
        "duplicate_messages": injection.duplicates,
    }
    if injection.late or injection.duplicates:
        settings["injection_seed"] = str(injection.seed)  # text: a seed is not a figure to plot
    offsets_s = send_offsets(injection.times_s, pacing)
    return PlannedDay(events, day_rows, shift, injection, offsets_s, settings)


def launcher_watch() -> Callable[[], str | None]:
    """A reason to stop once the process that launched this step is gone (re-parented):
    an orphaned step must not go on sending on its own."""
    parent = os.getppid()

    def orphaned() -> str | None:
        if os.getppid() != parent:
            return f"the process that launched this step (pid {parent}) exited; stopping"
        return None

    return orphaned


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Boundary:
    """A replay following another one without a gap: the one it follows, and the gap the
    recording had between the two days' page views."""

    previous: Checkpoint
    target_s: float


@dataclass
class ReplaySession:
    """One attempt (a step) of the replay of ``day`` into ``config.topic``, from encoding to the
    end of its send loop. ``replay_id``: the root run's id, shared by re-executions and retries,
    which resume its replay. ``info``, ``warning``: where its log lines go."""

    config: ReplaySettings
    day: str
    pacing: Pacing
    planned: PlannedDay
    kafka: ReplayCluster
    run_id: str
    replay_id: str
    retry_number: int = 0
    info: Callable[[str], None] = print
    warning: Callable[[str], None] = print
    # Set as the session goes: where its schedule ends goes into the checkpoints, and this
    # attempt's number in the run and the run's stall so far (ms), when the topic is claimed.
    progress: ReplayProgress = field(init=False)
    attempts: dict[str, int] = field(default_factory=lambda: {"attempt": 1, "stall_ms": 0})
    messages: EncodedMessages | None = None
    plan: ReplayPlan | None = None
    boundary: Boundary | None = None
    start_delay_s: float = 0.0

    def refused(self, error: BaseException) -> ReplayRefused:
        """A failure before anything was sent: the cluster or the topic, named, never retried."""
        retried = (
            f" (retry {self.retry_number} of {STEP_RETRIES}: the earlier attempts' reports are in this run's log, "
            "and every row they committed stays committed: re-execute the run to resume)"
            if self.retry_number
            else ""
        )
        return ReplayRefused(f"replay of {self.day} into {self.config.topic!r}: {error}{retried}")

    def encode(self, registry: MessageEncoder) -> EncodedMessages:
        """The day's messages, encoded in bulk before the clock starts. A typed format asks the
        registry once for its schema id: a registry that cannot give one refuses the replay
        here, before the topic is touched."""
        config, events = self.config, self.planned.events
        if config.message_format not in TYPED_FORMATS:
            messages = encode_messages(events, config.message_format)
        else:
            began = time.perf_counter()
            try:
                messages = registry.encode(events, config.topic, config.message_format)
            except RegistryError as error:
                raise self.refused(error) from error
            self.info(f"{len(messages)} {config.message_format} messages serialized in {time.perf_counter() - began:.3f} s")
        if self.planned.injection.duplicates:
            messages = DuplicatesAsSent(messages, self.planned.injection.original_of)
        self.messages = messages
        self.progress = ReplayProgress(total=len(messages))
        return messages

    def ensure_topic(self) -> bool:
        """Create the topic if missing (True: created). With original timestamps, a topic that
        would refuse or delete them refuses the replay here."""
        config, events = self.config, self.planned.events
        oldest_s = events["original_timestamp"].min() if config.record_timestamp == "original" else None
        try:
            return self.kafka.ensure_topic(
                config.topic,
                original_time_from_ms=oldest_s * 1000 if oldest_s is not None else None,
                allow_retention_deletes=config.allow_retention_deletes,
            )
        except (BrokerUnavailable, TopicUnfit) as error:
            raise self.refused(error) from error

    def wait_for_previous(self, run_ended: Callable[[str], bool]) -> Checkpoint | None:
        """Wait, with no producer of our own (starting one would fence it), until the replay of run
        ``after_run`` into the topic has finished, or the run has ended (``run_ended``); return its
        finished checkpoint (None: it ended without finishing). A stopped replay may be retried
        within its run: waited for too. Polls often only near the end its checkpoint announces, so
        the next day starts in time."""
        config = self.config
        last_said = -math.inf
        orphaned = launcher_watch()
        while True:
            try:
                ended = run_ended(config.after_run)  # read before the checkpoints: they are then final
                previous = previous_replay(self.kafka.checkpoints(), config.topic, config.after_run)
            except BrokerUnavailable as error:
                raise self.refused(error) from error
            if previous is not None and previous.status == ReplayStatus.FINISHED:
                return previous
            if ended:
                return None  # the topic's lease decides when this replay may start
            if reason := orphaned():
                raise ReplayRefused(f"waiting for run {config.after_run[:8]}: {reason}")
            if time.monotonic() - last_said >= 60:
                state = previous.describe(now_ms()) if previous else "not sending yet"
                self.info(f"waiting for run {config.after_run[:8]} to end before following it: {state}")
                last_said = time.monotonic()
            if previous is None or not previous.last_due_ms:  # not sending yet
                time.sleep(1.0)
            else:
                to_end_s = (previous.last_due_ms - now_ms()) / 1000
                time.sleep(min(max(to_end_s - 3.0, 0.05), 2.0))

    def find_resume_point(self) -> ReplayPlan:
        """Where this replay starts; ``TopicBusy`` while another live replay holds the topic."""
        return plan_replay(
            self.kafka.checkpoints(),
            topic=self.config.topic,
            day=self.day,
            replay_id=self.replay_id,
            resume=self.config.resume,
            restart=self.config.restart,
            now_ms=now_ms(),
            lease_s=self.kafka.lease_s,
        )

    def wait_for_topic(self) -> None:
        """Return once no other live replay holds the topic; refuse naming it after wait_for_topic_s."""
        began, last_said = time.monotonic(), -math.inf
        while True:
            try:
                self.find_resume_point()
                return
            except TopicBusy as busy:
                waited = time.monotonic() - began
                if waited >= self.config.wait_for_topic_s:
                    raise ReplayRefused(
                        f"{busy}; gave up after waiting {waited:.0f} s (wait_for_topic_s). Replays into one topic "
                        "never interleave: wait for that one, or replay into another topic."
                    ) from busy
                if time.monotonic() - last_said >= 30:
                    self.info(f"waiting for the topic: {busy}")
                    last_said = time.monotonic()
                time.sleep(1.0 + random.random())

    def claim(self) -> tuple[Publisher, CheckpointWriter]:
        """Wait for the topic, start a producer, find the resume point from what is committed
        now, and claim the topic with a first checkpoint.

        With exactly_once the producer's start fences every earlier one of this topic, so the
        checkpoints read after it are final: a zombie of an earlier attempt can commit nothing
        more. Two replays that found the topic free at the same moment: the one that then sees
        the other's live claim backs off before sending anything, and waits again."""
        config, kafka = self.config, self.kafka
        exactly_once = config.delivery == "exactly_once"
        while True:
            try:
                self.wait_for_topic()
            except (BrokerUnavailable, UnfinishedReplay) as error:
                raise self.refused(error) from error
            try:
                publisher = kafka.publisher(
                    config.topic,
                    replay_headers(self.day, self.run_id),
                    transactional_id=transactional_id(config.topic) if exactly_once else None,
                )
            except BrokerUnavailable as error:
                raise self.refused(error) from error
            try:
                self.plan = self.find_resume_point()
                checkpoint = self.checkpoint_writer(self.plan)
                publisher.commit(*checkpoint(self.plan.start_row, ReplayStatus.RUNNING), kafka.delivery_timeout_s)
                publisher.flush(kafka.delivery_timeout_s)
                self.progress.start_row = self.plan.start_row
                return publisher, checkpoint
            except TopicBusy as busy:
                publisher.close()
                self.info(f"another replay claimed the topic at the same moment; backing off: {busy}")
            except UnfinishedReplay as error:  # another launch left the day unfinished meanwhile
                publisher.close()
                raise self.refused(error) from error
            except (DeliveryError, BrokerUnavailable) as error:
                publisher.close()
                raise ReplayRefused(
                    f"replay of {self.day} into {config.topic!r} could not claim the topic: {error}",
                    retryable=not isinstance(error, ProducerFenced | NotAuthorized),
                ) from error

    def checkpoint_writer(self, plan: ReplayPlan) -> CheckpointWriter:
        """Checkpoints of this replay: a resumed one keeps where it began and who wrote it, and
        an earlier attempt of this run what it went through."""
        config, progress, run_id, total = self.config, self.progress, self.run_id, len(self.messages)
        resumed = plan.resumed
        if resumed is not None and resumed.start_offsets:
            start_offsets = resumed.start_offsets
            run_ids = tuple(dict.fromkeys((*resumed.run_ids, run_id)))
        else:
            start_offsets, run_ids = tuple(sorted(self.kafka.end_offsets(config.topic).items())), (run_id,)
        attempts, began_ms = self.attempts, now_ms()
        attempts["attempt"], attempts["stall_ms"] = next_attempt(resumed, run_id, began_ms)
        delivered = {"next_row": plan.start_row, "at_ms": began_ms}
        owner = f"{socket.gethostname()} pid {os.getpid()}"
        last_event_ms = round(float(self.planned.injection.times_s[-1]) * 1000)

        def checkpoint(next_row: int, status: ReplayStatus) -> tuple[bytes, bytes]:
            at_ms = now_ms()
            if next_row > delivered["next_row"]:
                delivered.update(next_row=next_row, at_ms=at_ms)
            record = Checkpoint(
                topic=config.topic,
                day=self.day,
                replay_id=self.replay_id,
                run_id=run_id,
                next_row=next_row,
                total=total,
                status=status,
                heartbeat_ms=at_ms,
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

    def follow(self, previous: Checkpoint | None) -> None:
        """Following another replay: the first page view is due at its last one's due time plus
        the recorded gap (a fresh start only: a resumed replay keeps going at once)."""
        if previous is None or not previous.last_due_ms or self.plan.resumed is not None:
            return
        now = now_ms()
        start_ms, target_s = boundary_start_ms(
            previous.last_due_ms, previous.last_event_ms / 1000, float(self.planned.injection.times_s[0]), self.pacing, now
        )
        self.start_delay_s = (start_ms - now) / 1000
        self.boundary = Boundary(previous, target_s)

    def labelled(self, publisher: Publisher) -> Publisher:
        """Late and duplicate rows carry their label; a resumed replay re-sends the duplicates
        still due byte for byte as their originals went out."""
        injection = self.planned.injection
        if injection.late or injection.duplicates:
            publisher = LabelledPublisher(publisher, injection.labels, self.plan.start_row)
        if injection.duplicates and self.plan.resumed is not None:
            self.recover_originals()
        return publisher

    def recover_originals(self) -> None:
        """The originals sent in an earlier attempt whose duplicates are still due: their bytes
        are read back from the topic."""
        injection, messages, plan, topic = self.planned.injection, self.messages, self.plan, self.config.topic
        wanted = originals_to_recover(injection, plan.start_row)
        if not wanted:
            return
        resumed = plan.resumed
        runs = {run_id.encode() for run_id in (*resumed.run_ids, self.run_id)}
        day = self.day.encode()
        records = self.kafka.read_back(topic, dict(resumed.start_offsets))
        mine = (
            (r.key, headers.get(INJECTED_HEADER), r.value)
            for r in sorted(records, key=lambda r: (r.partition, r.offset))
            if (headers := dict(r.headers or ())).get("source_day") == day and headers.get("dagster_run_id") in runs
        )
        messages.sent |= recover_sent(injection, messages.keys, plan.start_row, mine)
        if missing := len(wanted - messages.sent.keys()):
            self.warning(
                f"{missing} of the {len(wanted)} originals sent before the resume were not found in "
                f"{topic!r}: their duplicates are encoded again, with this attempt's send time"
            )

    def run(
        self,
        publisher: Publisher,
        checkpoint: CheckpointWriter,
        on_progress: Callable[[ReplayProgress], None],
        should_stop: Callable[[], str | None],
    ) -> ReplayProgress:
        """The send loop, from the resume point on; ``self.progress`` says how far it got, also
        when it raises."""
        config, planned = self.config, self.planned
        record_ts = (planned.events["original_timestamp"] * 1000).to_list() if config.record_timestamp == "original" else None
        return run_replay(
            self.messages,
            planned.offsets_s,
            publisher,
            start_row=self.plan.start_row,
            checkpoint=checkpoint,
            record_timestamps_ms=record_ts,
            progress=self.progress,
            on_progress=on_progress,
            should_stop=should_stop,
            paced=self.pacing.is_paced,
            start_delay_s=self.start_delay_s,
            timing=ReplayTiming(progress_every_s=config.progress_interval_s, delivery_timeout_s=self.kafka.delivery_timeout_s),
        )

    def failed(self, caught: DeliveryError | BrokerUnavailable | ReplayStopped) -> tuple[str, BaseException, float | None]:
        """A replay that failed while sending: (what to say, the error to name, how long to wait
        before a retry, None: not retried). Retried only when transient (not stopped, fenced or
        refused for a missing ACL), within ``STEP_RETRIES``, and while the cluster answers."""
        config, progress = self.config, self.progress
        # A message the broker refused for a missing ACL: say which, and do not retry.
        error: BaseException = caught
        if not isinstance(caught, NotAuthorized):
            error = self.kafka.settings().not_authorized(caught, f"sending to {config.topic!r}") or caught
        doubt = f", {progress.in_doubt} more in a commit the broker never confirmed" if progress.in_doubt else ""
        message = (
            f"replay of {self.day} into {config.topic!r} at {self.kafka.bootstrap_servers} failed: {error}. "
            f"{progress.delivered} messages delivered by this attempt ({progress.acked} acknowledged{doubt}); "
            f"committed through row {progress.next_row} of {len(self.messages)}."
        )
        transient = not isinstance(error, ReplayStopped | ProducerFenced | NotAuthorized)
        if transient and self.retry_number < STEP_RETRIES:
            # Retry only a cluster that answers again, asked for what is left of connect_timeout_s
            # after the stop itself: a dead one fails the run within delivery + connect timeouts.
            gone = self.kafka.unreachable(config.topic, self.kafka.connect_timeout_s - progress.cleanup_s)
            if gone is None:
                # Safe since checkpoints: the retry resumes from the last committed row.
                return message, error, 5 * 2**self.retry_number
            message += f" Not retried: {gone}."
        return message, error, None
