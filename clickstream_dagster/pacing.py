"""When each message of a replay is sent: a pure function from page-view times to send offsets.

The schedule is absolute (seconds after the replay starts, on a monotonic clock), not a
list of waits: time spent sending one message never delays the ones after it, so the
replay keeps no drift, and a message that falls behind goes out at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import numpy as np


class PacingMode(StrEnum):
    ORIGINAL = "original"  # the recorded gaps, divided by speed, clamped
    FIXED = "fixed"  # one message every interval_ms
    MAX = "max"  # as fast as the broker takes them, optionally capped by max_rate


MAX_WAIT_S = 86_400.0  # a day: the longest wait any setting may ask for between two messages
MIN_SPEED, MAX_SPEED = 1e-6, 1e6
MAX_RATE = 1e7  # messages per second; far beyond what one producer sends


class PacingError(ValueError):
    """A pacing setting is out of range; the message names the setting and the value."""


@dataclass(frozen=True)
class Pacing:
    mode: PacingMode = PacingMode.FIXED
    speed: float = 1.0
    min_delay_s: float = 0.0
    max_delay_s: float = 10.0
    interval_ms: float = 200.0
    max_rate: float | None = None  # messages per second, for mode=max

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", PacingMode(self.mode))
        # Bounded so that any schedule stays a sane number of seconds (an unbounded one ends in
        # OverflowError deep in time.sleep): nothing waits more than a day between messages.
        _require_within("speed", self.speed, MIN_SPEED, MAX_SPEED, "from 0.000001 to 1000000")
        _require_within("min_delay_s", self.min_delay_s, 0.0, MAX_WAIT_S, "from 0 to 86400 (a day)")
        _require_within(
            "max_delay_s", self.max_delay_s, self.min_delay_s, MAX_WAIT_S,
            f"from min_delay_s ({self.min_delay_s:g}) to 86400 (a day)",
        )
        _require_within("interval_ms", self.interval_ms, 0.0, MAX_WAIT_S * 1000, "from 0 to 86400000 (a day)")
        if self.max_rate is not None:
            _require_within(
                "max_rate", self.max_rate, 1 / MAX_WAIT_S, MAX_RATE, "from 1/86400 (one a day) to 10000000 msgs/s"
            )

    @property
    def is_paced(self) -> bool:
        """Whether send times are meaningful targets (lateness is only measured then)."""
        return self.mode != PacingMode.MAX or self.max_rate is not None

    def describe(self) -> str:
        if self.mode == PacingMode.ORIGINAL:
            return (
                f"original timing / speed {self.speed:g}, gaps clamped to "
                f"[{self.min_delay_s:g}, {self.max_delay_s:g}] s"
            )
        if self.mode == PacingMode.FIXED:
            return f"one message every {self.interval_ms:g} ms"
        return f"as fast as possible, capped at {self.max_rate:g} msgs/s" if self.max_rate else "as fast as possible"


def _require_within(name: str, value: float, low: float, high: float, expected: str) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and low <= value <= high):
        raise PacingError(f"pacing setting {name}={value!r} is invalid: expected a number {expected}")


def send_offsets(original_timestamps: np.ndarray, pacing: Pacing) -> np.ndarray:
    """Seconds after the start at which each message is due; the first is due at 0.

    ``original_timestamps`` are the page views' own times (seconds, in send order).
    """
    n = len(original_timestamps)
    if n == 0:
        return np.zeros(0, dtype=np.float64)
    if pacing.mode == PacingMode.ORIGINAL:
        gaps = np.diff(np.asarray(original_timestamps, dtype=np.float64)) / pacing.speed
        waits = np.clip(gaps, pacing.min_delay_s, pacing.max_delay_s)
        return np.concatenate(([0.0], np.cumsum(waits)))
    if pacing.mode == PacingMode.FIXED:
        return np.arange(n, dtype=np.float64) * (pacing.interval_ms / 1000.0)
    if pacing.max_rate is not None:
        return np.arange(n, dtype=np.float64) / pacing.max_rate
    return np.zeros(n, dtype=np.float64)


def boundary_wait_s(previous_event_s: float, first_event_s: float, pacing: Pacing) -> float:
    """The wait between the previous replay's last message and this one's first, as between two
    messages of one day: the recorded gap between their event times (clamped, at the speed) with
    original pacing, one interval with fixed pacing, none at max pacing."""
    return float(send_offsets(np.array([previous_event_s, first_event_s]), pacing)[1])


def boundary_start_ms(
    previous_due_ms: int, previous_event_s: float, first_event_s: float, pacing: Pacing, now_ms: int
) -> tuple[int, float]:
    """(when this replay's first message is due, wall clock epoch ms; the target gap in seconds)
    for a replay following one whose last message was due at ``previous_due_ms``: that due time
    plus the boundary wait, or now if that is already past (the lateness then shows in the
    achieved gap)."""
    target_s = boundary_wait_s(previous_event_s, first_event_s, pacing)
    return max(previous_due_ms + round(target_s * 1000), now_ms), target_s
