"""The send loop with a fake clock and an in-memory publisher: timing, delivery, interruption."""

from dataclasses import dataclass

import numpy as np
import polars as pl
import pytest

from clickstream_dagster.encoding import encode_messages
from clickstream_dagster.replay import DeliveryError, ReplayProgress, ReplayTiming, progress_line, run_replay


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


class MemoryPublisher:
    """Records sends; each send costs ``send_cost_s`` of fake time; partitions round-robin."""

    def __init__(self, clock: FakeClock, send_cost_s=0.0, fail_at=None, interrupt_at=None, partitions=2):
        self.clock, self.send_cost_s = clock, send_cost_s
        self.fail_at, self.interrupt_at, self.partitions = fail_at, interrupt_at, partitions
        self.sent: list[tuple[bytes, bytes, int | None, float]] = []
        self.flushes = 0

    def send(self, key, value, timestamp_ms):
        i = len(self.sent)
        if i == self.interrupt_at:
            raise KeyboardInterrupt  # stands in for Dagster's run termination (a BaseException)
        self.sent.append((key, value, timestamp_ms, self.clock.now))
        self.clock.now += self.send_cost_s
        if i == self.fail_at:
            return FakeDelivery(error=RuntimeError("NOT_ENOUGH_REPLICAS"))
        return FakeDelivery(Meta(i % self.partitions, i // self.partitions))

    def flush(self, timeout_s):
        self.flushes += 1


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
    assert progress.lateness_ms()["final_drift_ms"] == pytest.approx(0, abs=1e-6)


def test_a_late_message_goes_out_at_once_and_its_lateness_is_measured():
    clock = FakeClock()
    publisher = MemoryPublisher(clock, send_cost_s=0.25)  # slower than the 100 ms schedule
    progress = run_replay(messages(3), np.array([0, 0.1, 0.2]), publisher, timing=timing(clock))
    assert clock.sleeps == []
    assert progress.lateness_s.tolist() == pytest.approx([0, 0.15, 0.3])
    assert progress.lateness_ms()["lateness_max_ms"] == pytest.approx(300)


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


def test_a_delivery_never_acknowledged_fails_after_the_flush():
    clock = FakeClock()

    class Unacked(MemoryPublisher):
        def send(self, key, value, timestamp_ms):
            super().send(key, value, timestamp_ms)
            return FakeDelivery(done=False)

    with pytest.raises(DeliveryError, match="not acknowledged"):
        run_replay(messages(2), np.zeros(2), Unacked(clock), timing=timing(clock))


def test_an_interrupted_replay_flushes_and_reports_how_far_it_got():
    clock = FakeClock()
    publisher = MemoryPublisher(clock, interrupt_at=6)
    progress = ReplayProgress(total=0)
    with pytest.raises(KeyboardInterrupt):
        run_replay(messages(10), np.zeros(10), publisher, progress=progress, timing=timing(clock))
    assert publisher.flushes == 1
    assert (progress.sent, progress.acked, progress.total) == (6, 6, 10)


def test_progress_is_reported_at_each_tenth_and_every_few_seconds():
    clock = FakeClock()
    seen = []
    run_replay(
        messages(20),
        np.arange(20) * 1.0,  # one per second
        MemoryPublisher(clock),
        on_progress=lambda p: seen.append(p.sent),
        timing=timing(clock, progress_every_s=5.0),
    )
    assert seen == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]
    seen.clear()
    run_replay(
        messages(100),
        np.arange(100) * 1.0,  # a tenth every 10 s, a timer every 3 s
        MemoryPublisher(clock),
        on_progress=lambda p: seen.append(p.sent),
        timing=timing(clock, progress_every_s=3.0),
    )
    assert seen[:5] == [4, 7, 10, 13, 16]


def test_progress_line_reads_well():
    progress = ReplayProgress(total=10, sent=5, acked=4, elapsed_s=2.0, lateness_s=np.array([0.001] * 10))
    line = progress_line(progress, np.arange(10) * 1.0)
    assert line.startswith("5/10 sent (50%), 4 acked, 2 msgs/s, ETA 7 s")
    assert "p99 1.0 ms" in line
