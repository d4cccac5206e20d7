"""The replay loop: send encoded messages on schedule, commit checkpoints, account for delivery.

Pure Python: the broker sits behind the small ``Publisher`` protocol (kafka-python in
``kafka_client``, an in-memory one in unit tests) and the clock is injected, so timing
logic is testable without sleeping.

Nothing counts as delivered until a read_committed consumer can read it: with a
transactional publisher (exactly_once) that is when the transaction holding it commits,
otherwise (at_least_once) when the broker acknowledges it. Each commit carries a checkpoint,
the next row of the day to send, so a crashed replay resumes exactly where it stopped.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from clickstream_dagster.checkpoints import ReplayStatus
from clickstream_dagster.commit_cadence import CommitCadence
from clickstream_dagster.encoding import EncodedMessages


class Delivery(Protocol):
    """A pending send, as kafka-python's ``FutureRecordMetadata`` exposes it."""

    @property
    def is_done(self) -> bool: ...

    def failed(self) -> bool: ...

    @property
    def exception(self) -> BaseException | None: ...

    @property
    def value(self): ...  # RecordMetadata-like: .partition, .offset

    def add_callback(self, fn: Callable, *args) -> object: ...  # fn(*args, metadata) on success


class BatchDelivery(Protocol):
    """The deliveries of a batch of sends, accounted for together (see ``BatchPublisher``)."""

    count: int  # messages handed to the client
    acked: int  # of them acknowledged so far
    spans: dict[int, list[int]]  # partition -> [first, last] offset acknowledged

    @property
    def is_done(self) -> bool: ...  # every message of the batch reported

    def failed(self) -> bool: ...

    @property
    def exception(self) -> BaseException | None: ...


class Publisher(Protocol):
    """One replay's producer for its topic (and the checkpoint topic)."""

    transactional: bool  # exactly_once: messages become readable when a commit succeeds

    def send(self, key: bytes, value: bytes, timestamp_ms: int | None) -> Delivery: ...

    def commit(self, checkpoint_key: bytes, checkpoint_value: bytes, timeout_s: float) -> None:
        """Transactional: the checkpoint joins the open transaction, which commits within
        ``timeout_s`` (else raises); the next one begins. Otherwise: the checkpoint is sent."""

    def resolve_commit(self, timeout_s: float) -> bool:
        """After ``commit`` was interrupted (a signal: Ctrl-C, the run terminated) at any point:
        wait, at most ``timeout_s``, for that commit's outcome. True: it committed, and the next
        transaction is begun; False: it did not, and the transaction can be aborted. Raises
        ``CommitInDoubt`` when the broker does not say in time."""

    def flush(self, timeout_s: float) -> None: ...

    def abort(self, timeout_s: float) -> None: ...

    def close(self, timeout_s: float) -> None: ...


class BatchPublisher(Publisher, Protocol):
    """A publisher that can also send many messages at once, for max pacing: one delivery
    record per batch instead of one per message (librdkafka's speed is otherwise spent in
    the replay's own per-message accounting)."""

    def new_batch(self) -> BatchDelivery: ...

    def send_batch(self, batch: BatchDelivery, keys: list[bytes], values: list[bytes], timestamps_ms: list) -> None:
        """Send in order, counting into ``batch.count`` as each is handed over (also when it raises)."""


class DeliveryError(RuntimeError):
    """The broker refused, or did not acknowledge in time, a message or a commit."""


class ProducerFenced(DeliveryError):
    """A newer producer with this replay's transactional id started: this one may write no more."""


class CommitInDoubt(DeliveryError):
    """The broker did not confirm a commit in time: it may still complete, or be aborted."""


class ReplayStopped(RuntimeError):
    """The replay was told to stop (its launching process died, say) and stopped cleanly."""


# (next row, status) -> the checkpoint record's key and value, written with each commit.
CheckpointWriter = Callable[[int, ReplayStatus], tuple[bytes, bytes]]


@dataclass
class ReplayProgress:
    """How far a replay got; updated in place so it survives an interrupted run.

    Counts are of this attempt; rows are the day's row numbers (``start_row`` onwards)."""

    total: int  # rows in the replay, from row 0
    start_row: int = 0
    sent: int = 0  # handed to the client
    acked: int = 0  # acknowledged by the broker
    delivered: int = 0  # readable by a read_committed consumer (committed / acknowledged)
    in_doubt: int = 0  # in a commit whose outcome the broker never confirmed
    acked_bytes: int = 0
    commits: int = 0
    elapsed_s: float = 0.0
    cleanup_s: float = 0.0  # spent stopping (abort, stop checkpoint) after an error or a signal
    paced: bool = True
    lateness_s: np.ndarray = field(default_factory=lambda: np.zeros(0))  # hand-off - scheduled
    latency_s: np.ndarray = field(default_factory=lambda: np.zeros(0))  # delivered - scheduled
    commit_s: list[float] = field(default_factory=list)  # how long each commit took
    # Kafka partition -> [first offset, last offset] written
    offsets: dict[int, list[int]] = field(default_factory=dict)
    # The first messages exactly as sent (key, value), for the run's preview.
    first_messages: list[tuple[bytes, bytes]] = field(default_factory=list)
    keep_first: int = 5
    # Wall clock (epoch ns): when the schedule's first and last messages are due, and when the
    # first and the last message were handed over (0: none yet). What a replay following this
    # one without a gap starts from, and how close to its target it started.
    first_due_ns: int = 0
    last_due_ns: int = 0
    first_sent_ns: int = 0
    last_sent_ns: int = 0

    @property
    def rate(self) -> float:
        """Delivered messages per second."""
        return self.delivered / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def next_row(self) -> int:
        """The first row not yet delivered."""
        return self.start_row + self.delivered

    def figures_ms(self, stall_s: float = 0.0) -> dict[str, float]:
        """Lateness at hand-off and delivery latency (p50/p99/max), final drift, commit
        latency. Timing figures only for paced replays: at max pacing nothing is scheduled.
        ``stall_s``: how far earlier attempts' failures pushed this attempt's schedule back,
        counted in each row's delivery latency (its due time is the first attempt's)."""
        figures: dict[str, float] = {}
        if self.commit_s:
            commits = np.asarray(self.commit_s) * 1000.0
            figures |= {"commit_p50_ms": float(np.percentile(commits, 50)), "commit_p99_ms": float(np.percentile(commits, 99))}
        if not self.paced:
            return figures
        for name, values, shift_s in (
            ("lateness", self.lateness_s[: self.sent], 0.0),
            ("delivery_latency", self.latency_s[: self.delivered], stall_s),
        ):
            if values.size:
                ms = (values + shift_s) * 1000.0
                figures |= {
                    f"{name}_p50_ms": float(np.percentile(ms, 50)),
                    f"{name}_p99_ms": float(np.percentile(ms, 99)),
                    f"{name}_max_ms": float(ms.max()),
                }
        if self.sent:
            figures["final_drift_ms"] = float(self.lateness_s[self.sent - 1] * 1000.0)
        return figures


@dataclass(frozen=True)
class ReplayTiming:
    """The clock and the knobs of the loop; tests substitute a fake clock."""

    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    wall_clock_ns: Callable[[], int] = time.time_ns
    # A progress line at most this often; 10% milestones add one, but not within a sixth of it.
    progress_every_s: float = 60.0
    # A commit at least this often while messages flow (max pacing, or waits too short to
    # hold a commit), and a heartbeat commit at least this often during long waits.
    commit_every_s: float = 0.1
    # ... but while messages flow, commits take at most about this share of the time: when a
    # commit is slow (a distant cluster, a busy coordinator) they come less often instead, and a
    # max-paced exactly_once replay keeps over 90% of at_least_once's rate.
    commit_share: float = 0.05
    heartbeat_s: float = 5.0
    # A message or commit the broker has not confirmed this long after it was due fails the replay.
    delivery_timeout_s: float = 30.0
    # Aborting and closing after a failure never take longer than this.
    close_timeout_s: float = 5.0


# Max pacing: messages sent between two clock reads, delivery checks, commit checks and
# progress checks. At 100k msgs/s a batch takes well under 1 ms, at 10k about 3 ms: far
# below a commit every ~100 ms and a progress line every minute.
MAX_PACE_BATCH = 32


@dataclass
class ReplayState:
    """Where a replay stands, shared by its steps. The counts (sent, acknowledged, delivered, in
    doubt) are in ``progress``, which the caller keeps when the replay is interrupted."""

    progress: ReplayProgress
    start: float  # the clock reading at which row ``start_row`` is due
    last_commit: float  # the clock reading when the last commit ended
    # Sent, not yet accounted for, oldest first: (delivery, bytes, index in this attempt).
    pending: deque[tuple[Delivery | BatchDelivery, int, int]] = field(default_factory=deque)
    checkpointed: int = 0  # rows covered by the last checkpoint written
    # Rows a commit under way covers, until they are accounted for: an interrupt (a signal)
    # can land inside the commit or just after it, when the broker may have committed rows
    # the counts do not show yet.
    committing: int | None = None
    stopping_since: float | None = None  # the clock reading when the stop began
    next_tenth: int = 0  # the next 10% milestone (in rows sent) that earns a progress line
    last_report: float = 0.0  # the clock reading of the last progress line


class ExactlyOnce:
    """Transactional delivery: a row is delivered when the transaction holding it commits, so
    commits come before waits and at a steady interval; a stop aborts the open transaction."""

    def watch(self, replay: Replay, delivery: Delivery, j: int) -> None:
        pass  # acknowledgements say nothing about readability: the commit does

    def acknowledged(self, replay: Replay, j: int) -> None:
        pass

    def commit_due(self, replay: Replay, now: float, waiting: bool) -> bool:
        state, progress = replay.state, replay.state.progress
        unreadable_for_s = None  # the age of the oldest message not yet readable (rows delivered..sent)
        if progress.sent > progress.delivered:
            j = progress.delivered
            unreadable_for_s = now - (state.start + replay.due_s[j] + progress.lateness_s[j])
        return replay.cadence.due_for_readability(now - state.last_commit, unreadable_for_s, waiting)

    def checkpoint_rows(self, replay: Replay, rows: int) -> int:
        return rows  # the commit makes every row sent readable

    def in_doubt(self, replay: Replay, rows: int) -> int:
        return rows - replay.state.progress.delivered

    def committed(self, replay: Replay, rows: int, done: float) -> None:
        # A commit flushes first: every send so far is acknowledged and now readable.
        progress = replay.state.progress
        replay.settle(block=True)
        if replay.paced:
            due = np.asarray(replay.due_s[progress.delivered : rows])
            progress.latency_s[progress.delivered : rows] = done - replay.state.start - due
        progress.delivered, progress.in_doubt = rows, 0

    def before_finish(self, replay: Replay) -> None:
        pass  # the finishing commit flushes and accounts for everything

    def make_durable(self, replay: Replay, timeout_s: float) -> None:
        pass  # a committed checkpoint is durable already

    def drop_unreadable(self, replay: Replay, fenced: bool) -> bool:
        """Abort the open transaction (not when fenced, or a commit is in doubt: nothing may be
        written then). True when the producer can still write."""
        if replay.state.committing is not None:
            replay.resolve()
        with contextlib.suppress(Exception):
            if replay.state.progress.in_doubt == 0 and not fenced:
                replay.publisher.abort(replay.timing.close_timeout_s)
                return True
        return False


class AtLeastOnce:
    """Idempotent sends without transactions: a row is delivered when the broker acknowledges
    it (in send order, the acknowledged prefix), and a checkpoint is a plain send recording that
    prefix; a stop flushes what was sent."""

    def __init__(self, count: int):
        # When the broker acknowledged each row (paced only), stamped by delivery callbacks.
        self.acked_at = np.zeros(count, dtype=np.float64)

    def watch(self, replay: Replay, delivery: Delivery, j: int) -> None:
        delivery.add_callback(_stamp, self.acked_at, j, replay.clock)

    def acknowledged(self, replay: Replay, j: int) -> None:
        # Acknowledged in order per partition: the acked prefix in send order is delivered.
        progress = replay.state.progress
        if replay.paced:
            progress.latency_s[j] = (self.acked_at[j] or replay.clock()) - replay.state.start - replay.due_s[j]
        progress.delivered = j + 1

    def commit_due(self, replay: Replay, now: float, waiting: bool) -> bool:
        since_s = now - replay.state.last_commit
        replay.settle(block=False)
        advanced = replay.state.progress.delivered > replay.state.checkpointed
        return replay.cadence.due_for_progress(since_s, advanced)

    def checkpoint_rows(self, replay: Replay, rows: int) -> int:
        replay.settle(block=False)
        return replay.state.progress.delivered

    def in_doubt(self, replay: Replay, rows: int) -> int:
        return 0  # the rows were acknowledged already: only the checkpoint is in doubt

    def committed(self, replay: Replay, rows: int, done: float) -> None:
        pass  # delivery was counted as the acknowledgements came

    def before_finish(self, replay: Replay) -> None:
        replay.publisher.flush(replay.timing.delivery_timeout_s)
        replay.settle(block=True)

    def make_durable(self, replay: Replay, timeout_s: float) -> None:
        replay.publisher.flush(timeout_s)  # the checkpoint is a plain send

    def drop_unreadable(self, replay: Replay, fenced: bool) -> bool:
        """Flush, and count what the broker acknowledged: the acknowledged prefix is delivered,
        a batch not delivered whole counts its acknowledgements only. True when it flushed."""
        with contextlib.suppress(Exception):
            replay.publisher.flush(replay.timing.close_timeout_s)
            pending = replay.state.pending
            for delivery, size, j in pending:
                if delivery.is_done and not delivery.failed():
                    replay.record_ack(delivery, size, j)
                else:
                    replay.record_batch_acks(delivery)
                    break
            pending.clear()
            return True
        return False


class Replay:
    """One attempt of a replay: its inputs, its ``state``, and its steps (send, settle, commit,
    wait, stop and resolve). ``delivery`` (``ExactlyOnce`` or ``AtLeastOnce``, from the
    publisher) decides what a commit means; ``cadence`` when one is due. See ``run_replay``."""

    def __init__(
        self,
        messages: EncodedMessages,
        offsets_s: np.ndarray,
        publisher: Publisher,
        *,
        start_row: int,
        checkpoint: CheckpointWriter | None,
        record_timestamps_ms: list[int] | None,
        progress: ReplayProgress | None,
        on_progress: Callable[[ReplayProgress], None],
        should_stop: Callable[[], str | None],
        paced: bool,
        start_delay_s: float,
        timing: ReplayTiming,
    ):
        self.messages, self.publisher, self.checkpoint = messages, publisher, checkpoint
        self.start_row, self.record_timestamps_ms, self.paced = start_row, record_timestamps_ms, paced
        self.on_progress, self.should_stop, self.timing = on_progress, should_stop, timing
        self.clock, self.sleep, self.now_ns = timing.clock, timing.sleep, timing.wall_clock_ns
        total = len(messages)
        self.count = count = max(total - start_row, 0)
        progress = progress if progress is not None else ReplayProgress(total=total)
        progress.total, progress.start_row, progress.paced = total, start_row, paced
        progress.lateness_s = np.zeros(count, dtype=np.float64)
        progress.latency_s = np.zeros(count, dtype=np.float64)
        # When each row is due after the start; plain floats: NumPy scalar arithmetic is slow in the hot loop.
        origin_s = offsets_s[start_row] if count else 0.0
        self.due_s = (np.asarray(offsets_s[start_row:], dtype=np.float64) - origin_s).tolist()
        self.called = called = self.clock()
        start = called + max(start_delay_s, 0.0)
        progress.first_due_ns = self.now_ns() + round((start - called) * 1e9)
        progress.last_due_ns = progress.first_due_ns + round((self.due_s[-1] if count else 0.0) * 1e9)
        self.tenth = max(count // 10, 1)
        self.state = ReplayState(progress, start, last_commit=called, next_tenth=self.tenth, last_report=called)
        self.cadence = CommitCadence(timing.commit_every_s, timing.commit_share, timing.heartbeat_s)
        self.delivery: ExactlyOnce | AtLeastOnce = ExactlyOnce() if publisher.transactional else AtLeastOnce(count)

    def run(self) -> ReplayProgress:
        state = self.state
        try:
            if state.start > self.called:
                self.wait_until(state.start)
            if self.paced:
                for j in range(self.count):  # one message at a time, on time
                    self.send(j)
            else:
                self.send_at_max_pace()
            self.finish()
        except BaseException as error:
            self.stop(error)
            raise
        finally:
            state.progress.elapsed_s = max(self.clock() - state.start, 0.0)
        return state.progress

    def send(self, j: int) -> None:
        """Paced: wait until row ``j`` of this attempt is due, send it, then settle, commit and
        report as due."""
        state, progress, messages = self.state, self.state.progress, self.messages
        i = self.start_row + j
        due = state.start + self.due_s[j]
        now = self.wait_until(due)
        progress.lateness_s[j] = now - due
        sent_ns = self.now_ns()
        value = messages.value(i, sent_ns)
        progress.last_sent_ns = sent_ns
        if not progress.first_sent_ns:
            progress.first_sent_ns = sent_ns
        record_ts = self.record_timestamps_ms[i] if self.record_timestamps_ms is not None else None
        delivery = self.publisher.send(messages.keys[i], value, record_ts)
        self.delivery.watch(self, delivery, j)
        state.pending.append((delivery, len(value), j))
        if j < progress.keep_first:
            progress.first_messages.append((messages.keys[i], value))
        progress.sent = j + 1
        self.settle(block=False)
        self.commit_if_due(now)
        self.report(now)

    def send_at_max_pace(self) -> None:
        """Send every row as fast as the publisher takes them.

        The same accounting as ``send``, batched: nothing is scheduled, so the clock is read
        once per batch (the hand-off time and the replay time in the values are the batch's),
        and deliveries, commits and progress are looked at between batches. A
        ``BatchPublisher`` gets each batch in one call and reports it as one delivery."""
        messages, publisher, progress, pending = self.messages, self.publisher, self.state.progress, self.state.pending
        start_row, count, start, clock, now_ns = self.start_row, self.count, self.state.start, self.clock, self.now_ns
        keys, send, append = messages.keys, publisher.send, pending.append
        new_batch, send_batch = getattr(publisher, "new_batch", None), getattr(publisher, "send_batch", None)
        stamps = self.record_timestamps_ms if self.record_timestamps_ms is not None else [None] * (start_row + count)
        lateness = progress.lateness_s
        for first in range(0, count, MAX_PACE_BATCH):
            last = min(first + MAX_PACE_BATCH, count)
            lateness[first:last] = clock() - start  # hand-off time: commit_due measures waits from it
            rows = slice(start_row + first, start_row + last)
            sent_ns = now_ns()
            values = messages.values(rows.start, rows.stop, sent_ns)
            progress.first_sent_ns = progress.first_sent_ns or sent_ns
            progress.last_sent_ns = sent_ns
            if send_batch is not None:
                batch = new_batch()
                try:
                    send_batch(batch, keys[rows], values, stamps[rows])
                finally:
                    # What was handed over, even if a send failed mid-batch.
                    if batch.count:
                        append((batch, sum(map(len, values[: batch.count])), first + batch.count - 1))
                    progress.sent = first + batch.count
            else:
                try:
                    for j, key, value, stamp in zip(range(first, last), keys[rows], values, stamps[rows]):
                        append((send(key, value, stamp), len(value), j))
                finally:
                    # What was handed over, even if a send failed mid-batch.
                    progress.sent = pending[-1][2] + 1 if pending and pending[-1][2] >= first else first
            if first < progress.keep_first:
                progress.first_messages += list(zip(keys[rows], values))[: progress.keep_first - first]
            self.settle(False)
            now = clock()
            self.commit_if_due(now)
            self.report(now)

    def settle(self, block: bool) -> None:
        """Account for the deliveries the broker reported, oldest first (all of them when
        ``block``: the client was flushed); fail on a rejected one or one overdue."""
        state, pending = self.state, self.state.pending
        # Deliveries complete in order per partition; in the loop, looking at the head is enough.
        while pending and (block or pending[0][0].is_done):
            delivery, size, j = pending[0]
            if not delivery.is_done:
                unacked = state.progress.sent - state.progress.acked
                raise DeliveryError(f"{unacked} message(s) not acknowledged by the broker")
            pending.popleft()
            if delivery.failed():
                self.record_batch_acks(delivery)
                raise DeliveryError(f"the broker rejected a message: {delivery.exception!r}") from delivery.exception
            self.record_ack(delivery, size, j)
        if pending:
            j, timeout_s = pending[0][2], self.timing.delivery_timeout_s
            if self.clock() - state.start - self.due_s[j] > timeout_s + state.progress.lateness_s[j]:
                raise DeliveryError(f"no acknowledgement from the broker for {timeout_s:g} s")

    def record_ack(self, delivery: Delivery | BatchDelivery, size: int, j: int) -> None:
        """``delivery`` (the last of rows ..j) acknowledged: ``size`` bytes."""
        progress = self.state.progress
        if not self.record_batch_acks(delivery):
            meta = delivery.value
            span = progress.offsets.get(meta.partition)
            if span is None:
                progress.offsets[meta.partition] = [meta.offset, meta.offset]
            else:
                span[0], span[1] = min(span[0], meta.offset), max(span[1], meta.offset)
            progress.acked += 1
        progress.acked_bytes += size
        self.delivery.acknowledged(self, j)

    def record_batch_acks(self, delivery: Delivery | BatchDelivery) -> bool:
        """Count what of a batch was acknowledged (all of it, or, when the batch is not delivered
        whole, what is in the topic anyway: not a prefix of the day to resume after).
        False for a single message's delivery."""
        if getattr(delivery, "spans", None) is None:
            return False
        offsets = self.state.progress.offsets
        for partition, (first, last) in delivery.spans.items():
            span = offsets.get(partition)
            if span is None:
                offsets[partition] = [first, last]
            else:
                span[0], span[1] = min(span[0], first), max(span[1], last)
        self.state.progress.acked += delivery.acked
        return True

    def commit_if_due(self, now: float) -> None:
        if self.delivery.commit_due(self, now, waiting=False):
            self.commit(ReplayStatus.RUNNING)

    def commit(self, status: ReplayStatus) -> None:
        """Stop if told to; else write a checkpoint with ``status`` and commit it (with the open
        transaction, exactly_once), then account for what it made readable."""
        state, progress = self.state, self.state.progress
        if reason := self.should_stop():
            raise ReplayStopped(reason)
        if self.checkpoint is None:  # nothing to record (unit tests, benchmarks): only the stop check
            state.last_commit = self.clock()
            return
        rows = progress.sent
        state.checkpointed = self.delivery.checkpoint_rows(self, rows)
        key, value = self.checkpoint(self.start_row + state.checkpointed, status)
        began = self.clock()
        state.committing = rows
        try:
            self.publisher.commit(key, value, self.timing.delivery_timeout_s)
        except CommitInDoubt:
            state.committing = None
            progress.in_doubt = self.delivery.in_doubt(self, rows)
            raise
        except Exception:
            state.committing = None  # refused by the broker: not committed
            raise
        done = state.last_commit = self.clock()
        progress.commits += 1
        progress.commit_s.append(done - began)
        self.cadence.took(done - began)
        if done - began > 1.0:
            progress.elapsed_s = done - state.start
            self.on_progress(progress)  # a stalled broker shows in the delivery lag as soon as it answers
        self.delivery.committed(self, rows, done)
        state.committing = None

    def wait_until(self, due: float) -> float:
        """Sleep until ``due``; commit first if the wait can hold a commit, beat during long waits."""
        clock = self.clock
        now = clock()
        while now < due:
            if self.cadence.fits(due - now) and self.delivery.commit_due(self, now, waiting=True):
                self.commit(ReplayStatus.RUNNING)
                now = clock()
                continue
            self.sleep(min(due - now, self.timing.heartbeat_s))
            now = clock()
        return now

    def report(self, now: float) -> None:
        """A progress line at each tenth and at least every ``progress_every_s``, but not within
        a sixth of that of the last one (except the last row's)."""
        state, progress, every_s = self.state, self.state.progress, self.timing.progress_every_s
        if progress.sent >= state.next_tenth or now - state.last_report >= every_s:
            if now - state.last_report >= every_s / 6 or progress.sent == self.count:
                progress.elapsed_s = now - state.start
                self.on_progress(progress)
                state.last_report = now
            while state.next_tenth <= progress.sent:
                state.next_tenth += self.tenth

    def finish(self) -> None:
        """Every row sent: account for all of them, and commit the last checkpoint as finished."""
        self.delivery.before_finish(self)
        self.commit(ReplayStatus.FINISHED)
        self.delivery.make_durable(self, self.timing.delivery_timeout_s)

    def stop(self, error: BaseException) -> None:
        """Cancelled, stopped or failed: what was committed stays; what is not readable yet is
        dropped (exactly_once) or flushed and counted (at_least_once), so the report equals what
        a read_committed consumer finds; then, if the producer can still write, a checkpoint
        says the replay stopped, so it holds the topic no longer (best effort, bounded)."""
        state, progress, timeout_s = self.state, self.state.progress, self.timing.close_timeout_s
        state.stopping_since = self.clock()
        fenced = isinstance(error, ProducerFenced)
        clean = self.delivery.drop_unreadable(self, fenced)
        if self.checkpoint is not None and clean and not fenced:
            with contextlib.suppress(Exception):
                key, value = self.checkpoint(progress.next_row, ReplayStatus.STOPPED)
                self.publisher.commit(key, value, timeout_s)
                self.delivery.make_durable(self, timeout_s)
        progress.cleanup_s = self.clock() - state.stopping_since

    def resolve(self) -> None:
        """Interrupted around a commit: learn whether it committed before saying how far the
        replay got (neither committed nor aborted, when the broker does not answer in time)."""
        state, progress = self.state, self.state.progress
        rows, state.committing = state.committing, None
        try:
            if self.publisher.resolve_commit(self.timing.close_timeout_s):
                with contextlib.suppress(Exception):
                    self.settle(block=True)
                progress.delivered, progress.in_doubt = rows, 0
        except Exception:  # noqa: BLE001 - no answer: neither committed nor aborted
            progress.in_doubt = rows - progress.delivered


def run_replay(
    messages: EncodedMessages,
    offsets_s: np.ndarray,
    publisher: Publisher,
    *,
    start_row: int = 0,
    checkpoint: CheckpointWriter | None = None,
    record_timestamps_ms: list[int] | None = None,
    progress: ReplayProgress | None = None,
    on_progress: Callable[[ReplayProgress], None] = lambda p: None,
    should_stop: Callable[[], str | None] = lambda: None,
    paced: bool = True,
    start_delay_s: float = 0.0,
    timing: ReplayTiming = ReplayTiming(),
) -> ReplayProgress:
    """Send rows ``start_row..`` of ``messages``, row ``i`` at ``offsets_s[i] - offsets_s[start_row]``
    after the start, committing checkpoints along the way; then commit the last one as finished.

    ``start_delay_s``: the first message is due that long after the call (a replay that follows
    another one without a gap); heartbeat commits keep the claim on the topic meanwhile.
    ``record_timestamps_ms`` sets each Kafka record's timestamp (None: the send time).
    ``should_stop`` is asked at every commit; a reason stops the replay with ``ReplayStopped``.
    Pass a ``progress`` to keep it if the loop is interrupted (a run is cancelled): on any
    exception the open transaction is aborted (or, without one, the sends flushed), within
    ``close_timeout_s``, and ``progress`` says what a read_committed consumer will find.
    """
    replay = Replay(
        messages, offsets_s, publisher, start_row=start_row, checkpoint=checkpoint,
        record_timestamps_ms=record_timestamps_ms, progress=progress, on_progress=on_progress,
        should_stop=should_stop, paced=paced, start_delay_s=start_delay_s, timing=timing,
    )
    return replay.run()


def _stamp(times: np.ndarray, j: int, clock: Callable[[], float], metadata) -> None:
    # A client that hands reports over later than they arrived (librdkafka serves them
    # from the next poll) says when the broker acknowledged: ``acked_at``, on
    # time.monotonic (the loop's clock outside unit tests, which never use such a client).
    times[j] = getattr(metadata, "acked_at", None) or clock()


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class StopSignal:
    """The first stop signal a replay received, if any (``first_stop_signal_only``)."""

    signum: int | None = None


@contextlib.contextmanager
def first_stop_signal_only() -> Iterator[StopSignal]:
    """While inside, the first SIGINT or SIGTERM interrupts as its handler always did; any later
    one is ignored, so the stop that follows (abort, stop checkpoint, the stop line) completes.

    Ctrl-C reaches a step process twice: from the terminal (SIGINT to the whole process group)
    and, moments later, forwarded by Dagster's multiprocess executor. The second one used to land
    inside the first one's clean-up, and the step died without a word. The stop is bounded
    anyway (``close_timeout_s``). Only Python-level handlers are wrapped, in the main thread.
    """
    received = StopSignal()
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    originals = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}

    def first_only(signum, frame) -> None:
        if received.signum is not None:
            return
        received.signum = signum
        originals[signum](signum, frame)

    wrapped = [signum for signum, handler in originals.items() if callable(handler)]
    for signum in wrapped:
        signal.signal(signum, first_only)
    try:
        yield received
    finally:
        for signum in wrapped:
            signal.signal(signum, originals[signum])


def tell_the_terminal(line: str) -> None:
    """Write ``line`` on the process's controlling terminal, if it has one (best effort).

    After Ctrl-C a step's own output no longer reaches the terminal it came from: Dagster
    mirrors it there through ``tail`` processes of the same process group, and Ctrl-C ends them
    too. The run's log has the line either way; this is for the person who pressed the keys."""
    try:
        with open("/dev/tty", "w") as terminal:
            terminal.write(line + "\n")
    except OSError:
        pass  # no controlling terminal (a daemon-launched run, a pod): the run's log has it


def progress_line(progress: ReplayProgress, offsets_s: np.ndarray, now_s: float | None = None) -> str:
    """One log line: delivered/total, acked, rate, ETA, and the delivery lag when paced."""
    start, total = progress.start_row, progress.total
    delivered = progress.next_row
    count = total - start
    rate = progress.delivered / progress.elapsed_s if progress.elapsed_s > 0 else 0.0
    remaining = total - delivered
    if progress.paced and remaining and count and offsets_s[-1] > offsets_s[start]:
        eta_s = max(float(offsets_s[-1] - offsets_s[start]) - progress.elapsed_s, 0.0)
    else:
        eta_s = remaining / rate if rate > 0 else 0.0
    pct = 100.0 * delivered / total if total else 100.0
    line = (
        f"{delivered}/{total} delivered ({pct:.0f}%), {progress.sent} sent and {progress.acked} acked "
        f"this attempt, {rate:.0f} msgs/s delivered, ETA {eta_s:.0f} s"
    )
    if progress.paced and progress.sent:
        # How far delivery trails the schedule: a stalled broker shows here while it happens.
        j = progress.delivered
        if j < progress.sent:
            lag_s = progress.elapsed_s - float(offsets_s[start + j] - offsets_s[start])
        else:
            lag_s = float(progress.latency_s[j - 1]) if j else 0.0
        late = np.percentile(progress.lateness_s[: progress.sent], 99) * 1000
        line += f", delivery lag {max(lag_s, 0.0) * 1000:.0f} ms, lateness p99 {late:.1f} ms"
    return line
