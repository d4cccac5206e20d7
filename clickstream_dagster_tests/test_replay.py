"""The send loop with a fake clock and an in-memory publisher: timing, delivery, interruption."""

import os
import signal
from dataclasses import dataclass

import numpy as np
import polars as pl
import pytest

from clickstream_dagster.encoding import encode_messages
from clickstream_dagster.checkpoints import Checkpoint, ReplayStatus
from clickstream_dagster.replay import (
    MAX_PACE_BATCH,
    CommitInDoubt,
    DeliveryError,
    ProducerFenced,
    ReplayProgress,
    ReplayStopped,
    ReplayTiming,
    first_stop_signal_only,
    progress_line,
    run_replay,
)


class FakeClock:
    def __init__(self):
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@dataclass
class Meta:
    partition: int
    offset: int


class FakeDelivery:
    def __init__(self, meta=None, error=None, done=True):
        self._meta, self._error, self._done = meta, error, done

    @property
    def is_done(self):
        return self._done

    def failed(self):
        return self._error is not None

    @property
    def exception(self):
        return self._error

    @property
    def value(self):
        return self._meta

    def add_callback(self, fn, *args):
        if self._done and self._error is None:
            fn(*args, self._meta)


class MemoryPublisher:
    """Records sends and commits; each send costs ``send_cost_s`` and each commit ``commit_cost_s``
    of fake time; partitions round-robin. ``transactional``: what a read_committed consumer
    would read is ``committed`` (sends before the last successful commit)."""

    def __init__(
        self,
        clock: FakeClock,
        send_cost_s=0.0,
        fail_at=None,
        interrupt_at=None,
        partitions=2,
        transactional=False,
        commit_cost_s=0.0,
        commit_error=None,
        interrupt_commit=None,
    ):
        self.clock, self.send_cost_s = clock, send_cost_s
        self.fail_at, self.interrupt_at, self.partitions = fail_at, interrupt_at, partitions
        self.transactional, self.commit_cost_s, self.commit_error = transactional, commit_cost_s, commit_error
        self.sent: list[tuple[bytes, bytes, int | None, float]] = []
        self.checkpoints: list[tuple[float, dict]] = []  # (fake time, checkpoint) per commit
        self.committed = 0  # sends a read_committed consumer sees
        self.open = 0  # sends in the open transaction
        self.flushes = self.aborts = 0
        # (nth commit, "before" | "after"): a signal lands in that commit, before or after the broker committed it
        self.interrupt_commit = interrupt_commit
        self.began_commit = False

    def send(self, key, value, timestamp_ms):
        i = len(self.sent)
        if i == self.interrupt_at:
            raise KeyboardInterrupt  # stands in for Dagster's run termination (a BaseException)
        self.sent.append((key, value, timestamp_ms, self.clock.now))
        self.open += 1
        self.clock.now += self.send_cost_s
        if i == self.fail_at:
            return FakeDelivery(error=RuntimeError("NOT_ENOUGH_REPLICAS"))
        return FakeDelivery(Meta(i % self.partitions, i // self.partitions))

    def commit(self, checkpoint_key, checkpoint_value, timeout_s):
        if self.commit_error is not None:
            raise self.commit_error
        interrupt = self.interrupt_commit and self.interrupt_commit[0] == len(self.checkpoints)
        self.began_commit = True
        if interrupt and self.interrupt_commit[1] == "before":
            raise KeyboardInterrupt
        self.clock.now += self.commit_cost_s
        self.checkpoints.append((self.clock.now, Checkpoint.from_bytes(checkpoint_value)))
        if self.transactional:
            self.committed, self.open = self.committed + self.open, 0
        if interrupt:
            raise KeyboardInterrupt

    def resolve_commit(self, timeout_s):
        committed = self.interrupt_commit[1] == "after"
        self.interrupt_commit = None
        return committed

    def flush(self, timeout_s):
        self.flushes += 1

    def abort(self, timeout_s):
        self.aborts += 1
        self.open = 0

    def close(self, timeout_s):
        pass


class FakeBatch:
    def __init__(self):
        self.count = self.acked = 0
        self.spans: dict[int, list[int]] = {}
        self.exception = None
        self.is_done = True

    def failed(self):
        return self.exception is not None


class BatchMemoryPublisher(MemoryPublisher):
    """A MemoryPublisher that also takes batches (a ``BatchPublisher``), as librdkafka's does."""

    batches = 0

    def new_batch(self):
        return FakeBatch()

    def send_batch(self, batch, keys, values, timestamps_ms):
        self.batches += 1
        for key, value, stamp in zip(keys, values, timestamps_ms):
            delivery = self.send(key, value, stamp)
            batch.count += 1
            if delivery.failed():
                batch.exception = batch.exception or delivery.exception
                continue
            batch.acked += 1
            meta = delivery.value
            span = batch.spans.setdefault(meta.partition, [meta.offset, meta.offset])
            span[0], span[1] = min(span[0], meta.offset), max(span[1], meta.offset)


def writer(total: int):
    """A checkpoint writer as the replay asset makes one."""

    def checkpoint(next_row, status):
        record = Checkpoint("t", "2012-03-01", "R", "R", next_row, total, status, 0)
        return record.key, record.to_bytes()

    return checkpoint


def messages(n: int):
    events = pl.DataFrame(
        {
            "original_timestamp": list(range(1330560000, 1330560000 + n)),
            "userId": [f"U{i % 3}" for i in range(n)],
            "ip": ["1.2.3.4"] * n,
            "productId": ["P"] * n,
            "userAgent": ["UA"] * n,
        }
    )
    return encode_messages(events, "json")


def timing(clock: FakeClock, **kw) -> ReplayTiming:
    return ReplayTiming(clock=clock.clock, sleep=clock.sleep, wall_clock_ns=lambda: 5_000_000, **kw)


def test_messages_go_out_at_their_scheduled_times_in_order():
    clock = FakeClock()
    publisher = MemoryPublisher(clock)
    run_replay(messages(4), np.array([0, 0.5, 0.5, 2.0]), publisher, timing=timing(clock))
    send_times = [t - 1000.0 for *_, t in publisher.sent]
    assert send_times == [0, 0.5, 0.5, 2.0]
    assert [k for k, *_ in publisher.sent] == [b"U0", b"U1", b"U2", b"U0"]


def test_time_spent_sending_does_not_accumulate_as_drift():
    clock = FakeClock()
    publisher = MemoryPublisher(clock, send_cost_s=0.03)  # each send takes 30 ms of a 100 ms slot
    progress = run_replay(messages(50), np.arange(50) * 0.1, publisher, timing=timing(clock))
    send_times = np.array([t - 1000.0 for *_, t in publisher.sent])
    assert send_times == pytest.approx(np.arange(50) * 0.1)
    assert progress.figures_ms()["final_drift_ms"] == pytest.approx(0, abs=1e-6)


def test_a_late_message_goes_out_at_once_and_its_lateness_is_measured():
    clock = FakeClock()
    publisher = MemoryPublisher(clock, send_cost_s=0.25)  # slower than the 100 ms schedule
    progress = run_replay(messages(3), np.array([0, 0.1, 0.2]), publisher, timing=timing(clock))
    assert clock.sleeps == []
    assert progress.lateness_s.tolist() == pytest.approx([0, 0.15, 0.3])
    assert progress.figures_ms()["lateness_max_ms"] == pytest.approx(300)


def test_acks_bytes_and_partition_offsets_are_counted():
    clock = FakeClock()
    encoded = messages(5)
    progress = run_replay(encoded, np.zeros(5), MemoryPublisher(clock), timing=timing(clock))
    assert progress.acked == progress.sent == 5
    assert progress.acked_bytes == sum(len(encoded.value(i, 5_000_000)) for i in range(5))
    assert progress.offsets == {0: [0, 2], 1: [0, 1]}
    assert [k for k, _ in progress.first_messages] == [b"U0", b"U1", b"U2", b"U0", b"U1"]


def test_record_timestamps_are_passed_to_the_broker():
    clock = FakeClock()
    publisher = MemoryPublisher(clock)
    run_replay(messages(2), np.zeros(2), publisher, record_timestamps_ms=[7, 8], timing=timing(clock))
    assert [ts for _, _, ts, _ in publisher.sent] == [7, 8]


def test_a_rejected_delivery_fails_the_replay_and_counts_only_acks():
    clock = FakeClock()
    progress = ReplayProgress(total=0)
    with pytest.raises(DeliveryError, match="NOT_ENOUGH_REPLICAS"):
        run_replay(messages(10), np.zeros(10), MemoryPublisher(clock, fail_at=3), progress=progress, timing=timing(clock))
    assert progress.acked == 3


def test_a_delivery_never_acknowledged_fails_within_the_delivery_timeout():
    clock = FakeClock()

    class Unacked(MemoryPublisher):
        def send(self, key, value, timestamp_ms):
            super().send(key, value, timestamp_ms)
            return FakeDelivery(done=False)

    progress = ReplayProgress(total=0)
    with pytest.raises(DeliveryError, match="no acknowledgement from the broker for 30 s"):
        run_replay(messages(100), np.arange(100) * 1.0, Unacked(clock), progress=progress, timing=timing(clock))
    # The first message was sent at 0: the loop gives up at the first check past 30 s.
    assert 30 < progress.elapsed_s <= 32
    assert progress.delivered == 0


def test_an_interrupted_replay_flushes_and_reports_how_far_it_got():
    clock = FakeClock()
    publisher = MemoryPublisher(clock, interrupt_at=6)
    progress = ReplayProgress(total=0)
    with pytest.raises(KeyboardInterrupt):
        run_replay(messages(10), np.zeros(10), publisher, progress=progress, paced=False, timing=timing(clock))
    assert publisher.flushes == 1
    assert (progress.sent, progress.acked, progress.delivered, progress.total) == (6, 6, 6, 10)


def test_exactly_once_commits_before_each_wait_so_what_was_sent_is_readable_at_once():
    clock = FakeClock()
    publisher = MemoryPublisher(clock, transactional=True, commit_cost_s=0.01)
    progress = run_replay(messages(4), np.array([0, 1.0, 1.0, 3.0]), publisher, checkpoint=writer(4), timing=timing(clock))
    rows = [c.next_row for _, c in publisher.checkpoints]
    # The claim-less loop: a commit before each wait (after rows 0 and 2), then the final one.
    assert rows == [1, 3, 4]
    assert [c.status for _, c in publisher.checkpoints] == [ReplayStatus.RUNNING] * 2 + [ReplayStatus.FINISHED]
    assert publisher.committed == 4 and progress.delivered == 4 and progress.next_row == 4
    # Commits cost 10 ms but sit in the waits: no message is late.
    assert [t - 1000.0 for *_, t in publisher.sent] == pytest.approx([0, 1.0, 1.0, 3.0])
    figures = progress.figures_ms()
    assert figures["lateness_max_ms"] == pytest.approx(0)
    # Delivered = committed: 10 ms after each message's send.
    assert figures["delivery_latency_p50_ms"] == pytest.approx(10)
    assert progress.commits == 3 and figures["commit_p50_ms"] == pytest.approx(10)
    # After earlier attempts stalled for 39 s, the rows are due on the first attempt's schedule.
    stalled = progress.figures_ms(stall_s=39.0)
    assert stalled["delivery_latency_p50_ms"] == pytest.approx(39_010)
    assert stalled["lateness_max_ms"] == figures["lateness_max_ms"]  # the hand-off, this attempt


def test_a_wait_too_short_for_a_commit_is_not_spent_committing():
    clock = FakeClock()
    publisher = MemoryPublisher(clock, transactional=True, commit_cost_s=0.02)
    # 5 ms gaps, 20 ms commits: committing before every wait would make every message late.
    progress = run_replay(messages(200), np.arange(200) * 0.005, publisher, checkpoint=writer(200), timing=timing(clock))
    assert progress.delivered == 200
    # Not 200 times: 20 ms commits come every ~380 ms, so they take 5% of the time (commit_share).
    assert 3 <= progress.commits <= 5
    assert progress.figures_ms()["lateness_p50_ms"] < 1


def test_one_slow_commit_does_not_delay_the_commits_after_it():
    clock = FakeClock()

    class OneSlowCommit(MemoryPublisher):
        def commit(self, checkpoint_key, checkpoint_value, timeout_s):
            # The 6th commit takes 100 ms (the broker busy for a moment), every other one 9 ms.
            self.commit_cost_s = 0.1 if len(self.checkpoints) == 5 else 0.009
            super().commit(checkpoint_key, checkpoint_value, timeout_s)

    publisher = OneSlowCommit(clock, transactional=True)
    progress = run_replay(messages(100), np.arange(100) * 0.02, publisher, checkpoint=writer(100), timing=timing(clock))
    # Only the messages around the slow commit (it made five late) are readable later than their
    # 20 ms slot; before and after it, a commit in every wait, readable 9 ms after the send.
    latency_ms = progress.latency_s * 1000
    assert (latency_ms > 20).sum() <= 6
    assert np.median(latency_ms) == pytest.approx(9)
    assert progress.commits >= 95


def test_max_pacing_commits_about_every_100_ms_and_reports_no_timing_figures():
    clock = FakeClock()
    publisher = MemoryPublisher(clock, transactional=True, send_cost_s=0.001, commit_cost_s=0.005)
    progress = run_replay(messages(1000), np.zeros(1000), publisher, checkpoint=writer(1000), paced=False, timing=timing(clock))
    assert progress.delivered == 1000
    assert 8 <= progress.commits <= 12
    assert not any(k.startswith(("lateness", "delivery_latency", "final_drift")) for k in progress.figures_ms())


@pytest.mark.parametrize("commit_cost_s", [0.005, 0.02, 0.05])
def test_at_max_pacing_commits_take_about_five_percent_of_the_time_however_slow(commit_cost_s):
    clock = FakeClock()
    publisher = MemoryPublisher(clock, transactional=True, send_cost_s=0.0001, commit_cost_s=commit_cost_s)
    progress = run_replay(messages(50_000), np.zeros(50_000), publisher, checkpoint=writer(50_000), paced=False, timing=timing(clock))
    assert progress.delivered == 50_000
    # the last commit (FINISHED) closes the replay, whatever the cadence: left out
    share = sum(progress.commit_s[:-1]) / (progress.elapsed_s - progress.commit_s[-1])
    if commit_cost_s * 19 <= 0.1:  # fast commits: every 100 ms, as before
        assert share <= 0.05 and progress.commits >= 5.0 / (0.1 + commit_cost_s) - 2
    else:  # slow ones: less often, so committing stays ~5% of the replay
        assert 0.035 <= share <= 0.06


def test_long_waits_carry_heartbeat_commits_so_the_topic_stays_held():
    clock = FakeClock()
    publisher = MemoryPublisher(clock, transactional=True)
    run_replay(messages(2), np.array([0, 20.0]), publisher, checkpoint=writer(2), timing=timing(clock, heartbeat_s=5.0))
    times = [t - 1000.0 for t, _ in publisher.checkpoints]
    assert np.diff(times).max() <= 5.0 + 1e-9
    assert times[-1] == pytest.approx(20.0)


def test_a_resumed_replay_starts_at_its_row_and_keeps_the_same_gaps():
    clock = FakeClock()
    publisher = MemoryPublisher(clock, transactional=True)
    progress = run_replay(messages(6), np.array([0, 1, 2, 4, 7, 8.0]), publisher, start_row=3, checkpoint=writer(6), timing=timing(clock))
    assert [k for k, *_ in publisher.sent] == [b"U0", b"U1", b"U2"]  # rows 3, 4, 5
    assert [t - 1000.0 for *_, t in publisher.sent] == pytest.approx([0, 3, 4])
    assert (progress.start_row, progress.delivered, progress.next_row) == (3, 3, 6)
    assert publisher.checkpoints[-1][1].next_row == 6


def test_an_interrupted_exactly_once_replay_aborts_and_reports_only_what_was_committed():
    clock = FakeClock()
    publisher = MemoryPublisher(clock, transactional=True, interrupt_at=6)
    progress = ReplayProgress(total=0)
    with pytest.raises(KeyboardInterrupt):
        run_replay(messages(10), np.arange(10) * 1.0, publisher, checkpoint=writer(10), progress=progress, timing=timing(clock))
    assert publisher.aborts == 1
    assert progress.delivered == publisher.committed == 6  # each row committed before its wait
    last = publisher.checkpoints[-1][1]
    assert (last.status, last.next_row) == (ReplayStatus.STOPPED, 6)


@pytest.mark.parametrize("landed", ["before", "after"])
def test_an_interrupt_inside_a_commit_reports_what_the_broker_committed(landed):
    """Ctrl-C during a commit (or just after the broker took it): the counts, the stop checkpoint
    and so a resume follow the commit's real outcome, not the last one the loop accounted for."""
    clock = FakeClock()
    publisher = MemoryPublisher(clock, transactional=True, interrupt_commit=(4, landed))
    progress = ReplayProgress(total=0)
    with pytest.raises(KeyboardInterrupt):
        run_replay(messages(10), np.arange(10) * 1.0, publisher, checkpoint=writer(10), progress=progress, timing=timing(clock))
    committed = publisher.committed
    if landed == "after":  # the interrupted commit counts: its checkpoint is the one before the stop
        assert publisher.checkpoints[-2][1].next_row == committed > 0
    assert (progress.delivered, progress.in_doubt) == (committed, 0)
    last = publisher.checkpoints[-1][1]
    assert (last.status, last.next_row) == (ReplayStatus.STOPPED, committed)
    assert publisher.aborts == 1  # what was sent after it is dropped


def test_a_replay_told_to_stop_stops_at_the_next_commit():
    clock = FakeClock()
    publisher = MemoryPublisher(clock, transactional=True)
    reasons = iter([None, None, None, "launcher gone"])
    with pytest.raises(ReplayStopped, match="launcher gone"):
        run_replay(
            messages(10), np.arange(10) * 1.0, publisher, checkpoint=writer(10), should_stop=lambda: next(reasons), timing=timing(clock)
        )
    assert len(publisher.sent) == 4 and publisher.committed == 3


def test_a_commit_in_doubt_is_reported_as_such_and_not_aborted():
    clock = FakeClock()
    publisher = MemoryPublisher(clock, transactional=True, commit_error=CommitInDoubt("no answer"))
    progress = ReplayProgress(total=0)
    with pytest.raises(CommitInDoubt):
        run_replay(messages(3), np.arange(3) * 1.0, publisher, checkpoint=writer(3), progress=progress, timing=timing(clock))
    assert (progress.delivered, progress.in_doubt, publisher.aborts) == (0, 1, 0)


def test_a_fenced_replay_writes_nothing_more():
    clock = FakeClock()
    publisher = MemoryPublisher(clock, transactional=True, commit_error=ProducerFenced("newer producer"))
    with pytest.raises(ProducerFenced):
        run_replay(messages(3), np.arange(3) * 1.0, publisher, checkpoint=writer(3), timing=timing(clock))
    assert publisher.aborts == 0 and publisher.checkpoints == []


@pytest.mark.parametrize("publisher_class", [MemoryPublisher, BatchMemoryPublisher])
@pytest.mark.parametrize("transactional", [False, True])
def test_max_pacing_reads_the_clocks_once_per_batch_and_accounts_for_every_message(transactional, publisher_class):
    clock, reads = FakeClock(), []

    def monotonic():
        reads.append("monotonic")
        return clock.now

    def wall_clock_ns():
        reads.append("wall")
        return int(clock.now * 1e9)

    n = 3200
    publisher = publisher_class(clock, transactional=transactional, send_cost_s=0.0001, commit_cost_s=0.005)
    progress = run_replay(
        messages(n), np.zeros(n), publisher, checkpoint=writer(n), paced=False,
        timing=ReplayTiming(clock=monotonic, sleep=clock.sleep, wall_clock_ns=wall_clock_ns),
    )
    assert (progress.sent, progress.acked, progress.delivered) == (n, n, n)
    assert len(reads) <= 3 * n / MAX_PACE_BATCH + 30  # not one per message
    assert progress.offsets == {0: [0, n // 2 - 1], 1: [0, n // 2 - 1]}
    assert progress.first_messages == [(key, value) for key, value, *_ in publisher.sent[:5]]
    # Commits still come about every 100 ms of sending (0.32 s here), then the finished one.
    assert 2 <= progress.commits <= 5
    assert publisher.checkpoints[-1][1].status == ReplayStatus.FINISHED
    assert publisher.checkpoints[-1][1].next_row == n
    assert publisher_class is MemoryPublisher or publisher.batches == n / MAX_PACE_BATCH


@pytest.mark.parametrize("publisher_class", [MemoryPublisher, BatchMemoryPublisher])
def test_an_interrupted_max_paced_replay_counts_what_was_handed_over_mid_batch(publisher_class):
    clock = FakeClock()
    publisher = publisher_class(clock, interrupt_at=MAX_PACE_BATCH + 5)
    progress = ReplayProgress(total=0)
    with pytest.raises(KeyboardInterrupt):
        run_replay(messages(100), np.zeros(100), publisher, progress=progress, paced=False, timing=timing(clock))
    assert (progress.sent, progress.acked, progress.delivered) == (MAX_PACE_BATCH + 5,) * 3


def test_a_rejected_message_in_a_batch_fails_the_replay_counting_every_ack_and_checkpointing_the_prefix():
    clock = FakeClock()
    fail_at = MAX_PACE_BATCH + 3  # the second batch
    publisher = BatchMemoryPublisher(clock, fail_at=fail_at)
    progress = ReplayProgress(total=0)
    with pytest.raises(DeliveryError, match="rejected"):
        run_replay(messages(100), np.zeros(100), publisher, checkpoint=writer(100), progress=progress, paced=False, timing=timing(clock))
    sent = 2 * MAX_PACE_BATCH  # the failed batch is sent whole before its reports are looked at
    assert progress.sent == sent
    assert progress.acked == sent - 1  # every acknowledged message is in the topic: counted
    assert progress.delivered == MAX_PACE_BATCH  # the resumable prefix: the first batch
    assert publisher.checkpoints[-1][1].status == ReplayStatus.STOPPED
    assert publisher.checkpoints[-1][1].next_row == MAX_PACE_BATCH


def test_at_least_once_checkpoints_the_acknowledged_prefix():
    clock = FakeClock()
    publisher = MemoryPublisher(clock)
    progress = run_replay(messages(5), np.arange(5) * 1.0, publisher, checkpoint=writer(5), timing=timing(clock, heartbeat_s=0.5))
    rows = [c.next_row for _, c in publisher.checkpoints]
    assert rows == sorted(rows) and rows[-1] == 5
    assert publisher.checkpoints[-1][1].status == ReplayStatus.FINISHED
    assert progress.delivered == 5
    assert progress.figures_ms()["delivery_latency_max_ms"] == pytest.approx(0)  # acked at once


def test_progress_is_reported_at_each_tenth_but_not_more_often_than_a_sixth_of_the_interval():
    clock = FakeClock()
    seen = []
    run_replay(
        messages(20),
        np.arange(20) * 1.0,  # one per second: a tenth every 2 s
        MemoryPublisher(clock),
        on_progress=lambda p: seen.append(p.sent),
        timing=timing(clock, progress_every_s=6.0),
    )
    assert seen == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]
    seen.clear()
    run_replay(
        messages(100),
        np.arange(100) * 1.2,  # a tenth every 12 s, the interval 60 s: a line at each tenth
        MemoryPublisher(clock),
        on_progress=lambda p: seen.append(p.sent),
        timing=timing(clock, progress_every_s=60.0),
    )
    assert seen == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    seen.clear()
    run_replay(
        messages(2000),
        np.arange(2000) * 1.0,  # a tenth every 200 s, a line every 60 s
        MemoryPublisher(clock),
        on_progress=lambda p: seen.append(p.sent),
        timing=timing(clock, progress_every_s=60.0),
    )
    assert seen[:4] == [61, 121, 181, 200]
    assert len(seen) < 2000 / 60 + 12


def test_progress_line_reads_well():
    progress = ReplayProgress(total=10, sent=5, acked=4, delivered=4, elapsed_s=2.0, lateness_s=np.array([0.001] * 10))
    progress.latency_s = np.zeros(10)
    line = progress_line(progress, np.arange(10) * 1.0)
    assert line.startswith("4/10 delivered (40%), 5 sent and 4 acked this attempt, 2 msgs/s delivered, ETA 7 s")
    assert "lateness p99 1.0 ms" in line
    # Row 4 was due at 4 s; at 2 s elapsed it is not late yet.
    assert "delivery lag 0 ms" in line


class Interrupted(BaseException):
    """What Dagster's handler raises in a step (DagsterExecutionInterruptedError)."""


def test_only_the_first_stop_signal_interrupts_so_the_stop_itself_completes():
    """Ctrl-C reaches a step twice (the terminal, then Dagster's executor): the second one must
    not cut short the clean-up the first one started."""

    def dagster_like(signum, frame):
        raise Interrupted(signum)

    previous = {s: signal.signal(s, dagster_like) for s in (signal.SIGINT, signal.SIGTERM)}
    cleaned_up = False
    try:
        with pytest.raises(Interrupted):
            with first_stop_signal_only():
                try:
                    os.kill(os.getpid(), signal.SIGINT)  # handled at once: raises here
                finally:
                    os.kill(os.getpid(), signal.SIGINT)  # the forwarded one, during the clean-up
                    os.kill(os.getpid(), signal.SIGTERM)
                    cleaned_up = True
        assert cleaned_up
        # Outside, the handlers are back: the next stop interrupts again.
        assert signal.getsignal(signal.SIGINT) is dagster_like and signal.getsignal(signal.SIGTERM) is dagster_like
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def test_a_replay_following_another_starts_its_schedule_later_and_holds_the_topic_meanwhile():
    clock = FakeClock()
    wall = lambda: round((clock.now - 1000.0) * 1e9) + 7_000_000_000  # noqa: E731 - wall clock, 7 s ahead
    publisher = MemoryPublisher(clock, transactional=True)
    progress = run_replay(
        messages(3), np.array([0, 1, 3.0]), publisher, checkpoint=writer(3), start_delay_s=12.0,
        timing=ReplayTiming(clock=clock.clock, sleep=clock.sleep, wall_clock_ns=wall, heartbeat_s=5.0),
    )
    assert [t - 1000.0 for *_, t in publisher.sent] == pytest.approx([12, 13, 15])
    commits = [t - 1000.0 for t, _ in publisher.checkpoints]
    assert commits[0] <= 5.0 and np.diff(commits).max() <= 5.0 + 1e-9  # the lease is renewed while waiting
    assert progress.lateness_s.tolist() == pytest.approx([0, 0, 0])
    # Where its schedule began and ended, and when it sent: what the next replay starts from.
    assert (progress.first_due_ns, progress.last_due_ns) == (19_000_000_000, 22_000_000_000)
    assert (progress.first_sent_ns, progress.last_sent_ns) == (19_000_000_000, 22_000_000_000)


def test_a_start_already_past_starts_at_once():
    clock = FakeClock()
    publisher = MemoryPublisher(clock)
    run_replay(messages(2), np.array([0, 1.0]), publisher, start_delay_s=-3.0, timing=timing(clock))
    assert [t - 1000.0 for *_, t in publisher.sent] == pytest.approx([0, 1])
