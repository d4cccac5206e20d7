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
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from clickstream_dagster.checkpoints import ReplayStatus
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
    total = len(messages)
    count = max(total - start_row, 0)
    progress = progress or ReplayProgress(total=total)
    progress.total, progress.start_row, progress.paced = total, start_row, paced
    progress.lateness_s = lateness = np.zeros(count, dtype=np.float64)
    progress.latency_s = latency = np.zeros(count, dtype=np.float64)
    clock, sleep, now_ns = timing.clock, timing.sleep, timing.wall_clock_ns
    transactional = publisher.transactional
    # plain floats: NumPy scalar arithmetic is slow in the hot loop
    due_s = (np.asarray(offsets_s[start_row:], dtype=np.float64) - (offsets_s[start_row] if count else 0.0)).tolist()
    pending: deque[tuple[Delivery, int, int]] = deque()  # (delivery, size, index in this attempt)
    acked_at = np.zeros(count, dtype=np.float64)  # filled by delivery callbacks (paced only)
    called = clock()
    start = called + max(start_delay_s, 0.0)
    progress.first_due_ns = now_ns() + round((start - called) * 1e9)
    progress.last_due_ns = progress.first_due_ns + round((due_s[-1] if count else 0.0) * 1e9)
    last_commit = called
    checkpointed = [0]  # rows covered by the last checkpoint written
    # What a commit takes, as the median of the recent ones: a wait too short to hold one is not
    # spent committing. A median, so one slow commit does not push every message after it back
    # to the 100 ms cadence (as a running mean did, for the next half second).
    # None measured yet: try one in the first wait.
    recent_commits_s: deque[float] = deque(maxlen=15)
    # Both derived from recent_commits_s at each commit, as the send loop reads them: the
    # typical commit, and how old the oldest unreadable message gets while messages flow
    # (commit_every_s, or longer when commits are slow, so they take at most commit_share of the time).
    typical_commit_s, commit_interval_s = 0.0, timing.commit_every_s
    # Rows a commit under way covers, until they are accounted for: an interrupt (a signal)
    # can land inside the commit or just after it, when the broker may have committed rows
    # the counts do not show yet.
    committing: list[int | None] = [None]
    tenth = max(count // 10, 1)
    next_tenth, last_report = tenth, called

    def record_spans(spans: dict[int, list[int]]) -> None:
        for partition, (first, last) in spans.items():
            span = progress.offsets.get(partition)
            if span is None:
                progress.offsets[partition] = [first, last]
            else:
                span[0], span[1] = min(span[0], first), max(span[1], last)

    def record_batch_acks(delivery: Delivery | BatchDelivery) -> bool:
        """Count what of a batch was acknowledged (all of it, or, when the batch is not delivered
        whole, what is in the topic anyway: not a prefix of the day to resume after).
        False for a single message's delivery."""
        if getattr(delivery, "spans", None) is None:
            return False
        record_spans(delivery.spans)
        progress.acked += delivery.acked
        return True

    def record_ack(delivery: Delivery | BatchDelivery, size: int, j: int) -> None:
        """``delivery`` (the last of rows ..j) acknowledged: ``size`` bytes."""
        if not record_batch_acks(delivery):
            meta = delivery.value
            span = progress.offsets.get(meta.partition)
            if span is None:
                progress.offsets[meta.partition] = [meta.offset, meta.offset]
            else:
                span[0], span[1] = min(span[0], meta.offset), max(span[1], meta.offset)
            progress.acked += 1
        progress.acked_bytes += size
        if not transactional:
            # Acknowledged in order per partition: the acked prefix in send order is delivered.
            if paced:
                latency[j] = (acked_at[j] or clock()) - start - due_s[j]
            progress.delivered = j + 1

    def settle(block: bool) -> None:
        # Deliveries complete in order per partition; in the loop, looking at the head is enough.
        while pending and (block or pending[0][0].is_done):
            delivery, size, j = pending[0]
            if not delivery.is_done:
                raise DeliveryError(f"{progress.sent - progress.acked} message(s) not acknowledged by the broker")
            pending.popleft()
            if delivery.failed():
                record_batch_acks(delivery)
                raise DeliveryError(f"the broker rejected a message: {delivery.exception!r}") from delivery.exception
            record_ack(delivery, size, j)
        if pending and clock() - start - due_s[pending[0][2]] > timing.delivery_timeout_s + lateness[pending[0][2]]:
            raise DeliveryError(f"no acknowledgement from the broker for {timing.delivery_timeout_s:g} s")

    def commit(status: ReplayStatus) -> None:
        nonlocal last_commit, typical_commit_s, commit_interval_s
        reason = should_stop()
        if reason:
            raise ReplayStopped(reason)
        if checkpoint is None:  # nothing to record (unit tests, benchmarks): only the stop check
            last_commit = clock()
            return
        rows = progress.sent
        if not transactional:
            settle(block=False)
        checkpointed[0] = rows if transactional else progress.delivered
        key, value = checkpoint(start_row + checkpointed[0], status)
        began = clock()
        committing[0] = rows
        try:
            publisher.commit(key, value, timing.delivery_timeout_s)
        except CommitInDoubt:
            committing[0] = None
            progress.in_doubt = rows - progress.delivered if transactional else 0
            raise
        except Exception:
            committing[0] = None  # refused by the broker: not committed
            raise
        done = clock()
        progress.commits += 1
        progress.commit_s.append(done - began)
        recent_commits_s.append(done - began)
        typical_commit_s = statistics.median(recent_commits_s)
        commit_interval_s = max(timing.commit_every_s, typical_commit_s * (1 - timing.commit_share) / timing.commit_share)
        last_commit = done
        if done - began > 1.0:
            progress.elapsed_s = done - start
            on_progress(progress)  # a stalled broker shows in the delivery lag as soon as it answers
        if transactional:
            # A commit flushes first: every send so far is acknowledged and now readable.
            settle(block=True)
            if paced:
                latency[progress.delivered : rows] = done - start - np.asarray(due_s[progress.delivered : rows])
            progress.delivered, progress.in_doubt = rows, 0
        committing[0] = None

    def commit_due(now: float, waiting: bool) -> bool:
        since = now - last_commit
        if transactional:
            # Before a wait, make what was sent readable at once; while sending, every commit_interval_s.
            # the oldest message not yet readable (a commit covers rows delivered..sent)
            if progress.sent > progress.delivered:
                oldest_s = now - (start + due_s[progress.delivered] + lateness[progress.delivered])
                if waiting or oldest_s >= commit_interval_s:
                    return True
            return since >= timing.heartbeat_s
        settle(block=False)
        advanced = progress.delivered > checkpointed[0]
        return (advanced and since >= timing.commit_every_s) or since >= timing.heartbeat_s

    def wait_until(due: float) -> float:
        """Sleep until ``due``; commit first if the wait can hold a commit, beat during long waits."""
        now = clock()
        while now < due:
            if due - now > typical_commit_s * 1.5 and commit_due(now, waiting=True):
                commit(ReplayStatus.RUNNING)
                now = clock()
                continue
            sleep(min(due - now, timing.heartbeat_s))
            now = clock()
        return now

    def checkpoint_if_due(now: float) -> None:
        if commit_due(now, waiting=False):
            commit(ReplayStatus.RUNNING)

    def report(now: float) -> None:
        nonlocal next_tenth, last_report
        if progress.sent >= next_tenth or now - last_report >= timing.progress_every_s:
            if now - last_report >= timing.progress_every_s / 6 or progress.sent == count:
                progress.elapsed_s = now - start
                on_progress(progress)
                last_report = now
            while next_tenth <= progress.sent:
                next_tenth += tenth

    try:
        if start > called:
            wait_until(start)
        if not paced:
            # No schedule to keep: a loop of its own, with the clock and the checks once per batch.
            _send_at_max_pace(
                messages, publisher, start_row, count, record_timestamps_ms, progress, pending,
                settle, checkpoint_if_due, report, start, clock, now_ns,
            )
        for j in range(0 if paced else count, count):  # paced: one message at a time, on time
            i = start_row + j
            due = start + due_s[j]
            now = wait_until(due) if paced else clock()
            lateness[j] = now - due
            sent_ns = now_ns()
            value = messages.value(i, sent_ns)
            progress.last_sent_ns = sent_ns
            if not progress.first_sent_ns:
                progress.first_sent_ns = sent_ns
            record_ts = record_timestamps_ms[i] if record_timestamps_ms is not None else None
            delivery = publisher.send(messages.keys[i], value, record_ts)
            if paced and not transactional:
                delivery.add_callback(_stamp, acked_at, j, clock)
            pending.append((delivery, len(value), j))
            if j < progress.keep_first:
                progress.first_messages.append((messages.keys[i], value))
            progress.sent = j + 1
            settle(block=False)
            checkpoint_if_due(now)
            report(now)
        if not transactional:
            publisher.flush(timing.delivery_timeout_s)
            settle(block=True)
        commit(ReplayStatus.FINISHED)
        if not transactional:
            publisher.flush(timing.delivery_timeout_s)  # the finished checkpoint itself
    except BaseException as error:
        # Cancelled, stopped or failed: what was committed stays; an open transaction is
        # aborted, so the report equals what a read_committed consumer finds.
        stopping_since = clock()
        clean = False  # whether the producer can still write: only then is the stop recorded
        if transactional and committing[0] is not None:
            # Interrupted around a commit: learn whether it committed before saying how far we got.
            rows, committing[0] = committing[0], None
            try:
                if publisher.resolve_commit(timing.close_timeout_s):
                    with contextlib.suppress(Exception):
                        settle(block=True)
                    progress.delivered, progress.in_doubt = rows, 0
            except Exception:  # noqa: BLE001 - no answer: neither committed nor aborted
                progress.in_doubt = rows - progress.delivered
        with contextlib.suppress(Exception):
            if transactional:
                if progress.in_doubt == 0 and not isinstance(error, ProducerFenced):
                    publisher.abort(timing.close_timeout_s)
                    clean = True
            else:
                publisher.flush(timing.close_timeout_s)
                for delivery, size, j in pending:
                    if delivery.is_done and not delivery.failed():
                        record_ack(delivery, size, j)
                    else:
                        record_batch_acks(delivery)
                        break
                pending.clear()
                clean = True
        if checkpoint is not None and clean and not isinstance(error, ProducerFenced):
            # Say the replay stopped, so it holds the topic no longer (best effort, bounded).
            with contextlib.suppress(Exception):
                key, value = checkpoint(progress.next_row, ReplayStatus.STOPPED)
                publisher.commit(key, value, timing.close_timeout_s)
                if not transactional:
                    publisher.flush(timing.close_timeout_s)
        progress.cleanup_s = clock() - stopping_since
        raise
    finally:
        progress.elapsed_s = max(clock() - start, 0.0)
    return progress


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


# Max pacing: messages sent between two clock reads, delivery checks, commit checks and
# progress checks. At 100k msgs/s a batch takes well under 1 ms, at 10k about 3 ms: far
# below a commit every ~100 ms and a progress line every minute.
MAX_PACE_BATCH = 32


def _send_at_max_pace(
    messages: EncodedMessages,
    publisher: Publisher,
    start_row: int,
    count: int,
    record_timestamps_ms: list[int] | None,
    progress: ReplayProgress,
    pending: deque,
    settle: Callable[[bool], None],
    checkpoint_if_due: Callable[[float], None],
    report: Callable[[float], None],
    start: float,
    clock: Callable[[], float],
    now_ns: Callable[[], int],
) -> None:
    """Send rows ``start_row..start_row + count`` as fast as the publisher takes them.

    The same accounting as the paced loop, batched: nothing is scheduled, so the clock is
    read once per batch (the hand-off time and the replay time in the values are the
    batch's), and deliveries, commits and progress are looked at between batches. A
    ``BatchPublisher`` gets each batch in one call and reports it as one delivery."""
    keys, send, append = messages.keys, publisher.send, pending.append
    new_batch, send_batch = getattr(publisher, "new_batch", None), getattr(publisher, "send_batch", None)
    stamps = record_timestamps_ms if record_timestamps_ms is not None else [None] * (start_row + count)
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
        settle(False)
        now = clock()
        checkpoint_if_due(now)
        report(now)


def _stamp(times: np.ndarray, j: int, clock: Callable[[], float], metadata) -> None:
    # A client that hands reports over later than they arrived (librdkafka serves them
    # from the next poll) says when the broker acknowledged: ``acked_at``, on
    # time.monotonic (the loop's clock outside unit tests, which never use such a client).
    times[j] = getattr(metadata, "acked_at", None) or clock()


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
