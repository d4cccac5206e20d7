"""Which day a replay cycle tick replays: a pure round robin over the dataset's days."""

from collections.abc import Sequence
from datetime import datetime, timezone

# Tick 0 of every cycle: any fixed instant works; this one reads well.
CYCLE_ANCHOR = datetime(2012, 3, 1, tzinfo=timezone.utc)


def cycle_day(tick: datetime, period_s: float, days: Sequence[str]) -> str:
    """The day for the tick at ``tick``: consecutive ticks ``period_s`` apart take
    consecutive days, wrapping around, and the same tick always takes the same day."""
    if period_s <= 0:
        raise ValueError(f"period_s={period_s}: expected > 0")
    index = int((tick - CYCLE_ANCHOR).total_seconds() // period_s)
    return days[index % len(days)]
