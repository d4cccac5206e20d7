"""The replay loop: send encoded messages on schedule, and account for every delivery.

Pure Python: the broker sits behind the small ``Publisher`` protocol (kafka-python in
``kafka_client``, an in-memory one in unit tests) and the clock is injected, so timing
logic is testable without sleeping. Nothing counts as sent until the broker acks it.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

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


class Publisher(Protocol):
    def send(self, key: bytes, value: bytes, timestamp_ms: int | None) -> Delivery: ...

    def flush(self, timeout_s: float) -> None: ...


class DeliveryError(RuntimeError):
    """The broker refused or never acknowledged a message."""


@dataclass
class ReplayProgress:
    """How far a replay got; updated in place so it survives an interrupted run."""

    total: int
    sent: int = 0  # handed to the client
    acked: int = 0  # acknowledged by the broker
    acked_bytes: int = 0
    elapsed_s: float = 0.0
    lateness_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    # Kafka partition -> [first offset, last offset] written
    offsets: dict[int, list[int]] = field(default_factory=dict)
    # The first messages exactly as sent (key, value), for the run's preview.
    first_messages: list[tuple[bytes, bytes]] = field(default_factory=list)
    keep_first: int = 5

    @property
    def rate(self) -> float:
        return self.acked / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def lateness_ms(self) -> dict[str, float]:
        """p50/p99/max of (actual - scheduled send time), and the final drift, in ms."""
        late = self.lateness_s[: self.sent] * 1000.0
        if late.size == 0:
            return {}
        return {
            "lateness_p50_ms": float(np.percentile(late, 50)),
            "lateness_p99_ms": float(np.percentile(late, 99)),
            "lateness_max_ms": float(late.max()),
            "final_drift_ms": float(late[-1]),
        }


@dataclass(frozen=True)
class ReplayTiming:
    """The clock and the knobs of the loop; tests substitute a fake clock."""

    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    wall_clock_ns: Callable[[], int] = time.time_ns
    progress_every_s: float = 5.0
    flush_timeout_s: float = 30.0


def run_replay(
    messages: EncodedMessages,
    offsets_s: np.ndarray,
    publisher: Publisher,
    *,
    record_timestamps_ms: list[int] | None = None,
    progress: ReplayProgress | None = None,
    on_progress: Callable[[ReplayProgress], None] = lambda p: None,
    timing: ReplayTiming = ReplayTiming(),
) -> ReplayProgress:
    """Send ``messages[i]`` at ``start + offsets_s[i]``, then flush and check every delivery.

    ``record_timestamps_ms`` sets each Kafka record's timestamp (None: the send time).
    Pass a ``progress`` to keep it if the loop is interrupted (e.g. a run is cancelled):
    on any exception the loop still flushes, within the bounded timeout, and counts what
    the broker acknowledged before re-raising.
    """
    total = len(messages)
    progress = progress or ReplayProgress(total=total)
    progress.total = total
    progress.lateness_s = np.zeros(total, dtype=np.float64)
    pending: deque[tuple[Delivery, int]] = deque()
    clock, sleep, now_ns = timing.clock, timing.sleep, timing.wall_clock_ns
    tenth = max(total // 10, 1)
    next_tenth, next_report = tenth, timing.progress_every_s
    lateness = progress.lateness_s
    due_s = offsets_s.tolist()  # plain floats: NumPy scalar arithmetic is slow in the hot loop
    start = clock()

    def record(delivery: Delivery, size: int) -> None:
        meta = delivery.value
        span = progress.offsets.get(meta.partition)
        if span is None:
            progress.offsets[meta.partition] = [meta.offset, meta.offset]
        else:
            span[0], span[1] = min(span[0], meta.offset), max(span[1], meta.offset)
        progress.acked += 1
        progress.acked_bytes += size

    def settle(block: bool) -> None:
        # Deliveries complete in order per partition; in the loop, looking at the head is enough.
        while pending and (block or pending[0][0].is_done):
            delivery, size = pending[0]
            if not delivery.is_done:
                raise DeliveryError(f"{len(pending)} message(s) not acknowledged by the broker after flush")
            pending.popleft()
            if delivery.failed():
                raise DeliveryError(f"the broker rejected a message: {delivery.exception!r}") from delivery.exception
            record(delivery, size)

    try:
        for i in range(total):
            due = start + due_s[i]
            now = clock()
            if now < due:
                sleep(due - now)
                now = clock()
            lateness[i] = now - due
            value = messages.value(i, now_ns())
            record_ts = record_timestamps_ms[i] if record_timestamps_ms is not None else None
            pending.append((publisher.send(messages.keys[i], value, record_ts), len(value)))
            if i < progress.keep_first:
                progress.first_messages.append((messages.keys[i], value))
            progress.sent = i + 1
            settle(block=False)
            if progress.sent >= next_tenth or now - start >= next_report:
                progress.elapsed_s = now - start
                on_progress(progress)
                while next_tenth <= progress.sent:
                    next_tenth += tenth
                next_report = (now - start) + timing.progress_every_s
        publisher.flush(timing.flush_timeout_s)
        settle(block=True)
    except BaseException:
        # Cancelled, or a delivery failed: still deliver what was handed over (bounded),
        # and count what the broker acknowledged, so the report tells how far it got.
        with contextlib.suppress(Exception):
            publisher.flush(timing.flush_timeout_s)
        for delivery, size in pending:
            if delivery.is_done and not delivery.failed():
                record(delivery, size)
        pending.clear()
        raise
    finally:
        progress.elapsed_s = clock() - start
    return progress


def progress_line(progress: ReplayProgress, offsets_s: np.ndarray) -> str:
    """One log line: sent/total, rate, ETA (from the schedule when paced), lateness."""
    sent, total = progress.sent, progress.total
    rate = sent / progress.elapsed_s if progress.elapsed_s > 0 else 0.0
    if sent < total and offsets_s[-1] > 0:
        eta_s = max(float(offsets_s[-1]) - progress.elapsed_s, 0.0)
    else:
        eta_s = (total - sent) / rate if rate > 0 else 0.0
    late = progress.lateness_s[:sent]
    p99 = float(np.percentile(late, 99)) * 1000 if sent else 0.0
    pct = 100.0 * sent / total if total else 100.0
    return (
        f"{sent}/{total} sent ({pct:.0f}%), {progress.acked} acked, {rate:.0f} msgs/s, "
        f"ETA {eta_s:.0f} s, lateness p99 {p99:.1f} ms"
    )
