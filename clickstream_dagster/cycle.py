"""Which day a replay cycle tick replays: a pure round robin over the dataset's days."""

from collections.abc import Sequence
from datetime import date, datetime, time, timezone


def cycle_day(tick: datetime, period_s: float, days: Sequence[str]) -> str:
    """The day for the tick at ``tick``: consecutive ticks ``period_s`` apart take
    consecutive days, wrapping around, and the same tick always takes the same day.
    Tick 0 (any fixed instant works; this one reads well) is the first day at 00:00 UTC."""
    if period_s <= 0:
        raise ValueError(f"period_s={period_s}: expected > 0")
    anchor = datetime.combine(date.fromisoformat(days[0]), time(), tzinfo=timezone.utc)
    index = int((tick - anchor).total_seconds() // period_s)
    return days[index % len(days)]
