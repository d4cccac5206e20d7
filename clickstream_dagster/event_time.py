"""A replayed day as of another date, with visitors of another epoch. Pure; no Dagster.

``event_date`` moves a day's page views by whole days, time of day kept: in UTC epoch seconds
a day is exactly 86400 s (no daylight saving), so the shift is an integer added to
``original_timestamp``. ``visitor_epoch`` gives every visitor a new id, stable within the
epoch: a name-based UUID (v5) of the recorded id and the epoch, upper case like the recorded
ids, so each round of the live feed brings visitors no earlier round had.
"""

from __future__ import annotations

import datetime as dt
import uuid

import polars as pl

DAY_S = 86_400
RECORDED, TODAY = "recorded", "today"
# Namespace of the visitor ids of epochs > 0 (a fixed, arbitrary UUID: changing it changes every id).
VISITOR_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/clickstream-dagster/visitor-epoch")


class EventTimeError(ValueError):
    """A bad ``event_date`` or ``visitor_epoch``, named."""


def shift_days(day: str, event_date: str, today: dt.date | None = None) -> int:
    """Whole days from the recorded ``day`` to ``event_date`` (``recorded``: 0; ``today``: the
    UTC date ``today``, default now; else ``YYYY-MM-DD``)."""
    recorded = dt.date.fromisoformat(day)
    if event_date == RECORDED:
        return 0
    if event_date == TODAY:
        target = today or dt.datetime.now(dt.UTC).date()
    else:
        try:
            target = dt.date.fromisoformat(event_date)
            if len(event_date) != 10:
                raise ValueError(event_date)
        except ValueError:
            raise EventTimeError(
                f"event_date={event_date!r}: expected 'recorded', 'today' or a date YYYY-MM-DD"
            ) from None
    return (target - recorded).days


def check_epoch(visitor_epoch: int) -> None:
    if visitor_epoch < 0:
        raise EventTimeError(f"visitor_epoch={visitor_epoch}: expected an integer >= 0 (0: the recorded ids)")


def visitor_id(recorded_id: str, visitor_epoch: int) -> str:
    """The visitor's id in ``visitor_epoch`` (0: the recorded id)."""
    if visitor_epoch == 0:
        return recorded_id
    return str(uuid.uuid5(VISITOR_NAMESPACE, f"{recorded_id}/{visitor_epoch}")).upper()


def as_of(events: pl.DataFrame, *, days: int, visitor_epoch: int) -> pl.DataFrame:
    """``events`` moved on by ``days`` whole days, with the visitor ids of ``visitor_epoch``;
    every other column (``ip`` included) unchanged."""
    check_epoch(visitor_epoch)
    out = events
    if days:
        out = out.with_columns(pl.col("original_timestamp") + days * DAY_S)
    if visitor_epoch:
        recorded = out["userId"].unique().drop_nulls().to_list()
        mapping = {r: visitor_id(r, visitor_epoch) for r in recorded}
        out = out.with_columns(pl.col("userId").replace_strict(mapping, default=None, return_dtype=pl.String))
    return out
