"""The live feed: which day to replay next, so that the days follow each other for ever.

Pure: the feed's state is its own runs (newest first), as the run history records them, so a
restarted daemon or a lost cursor picks up where the feed was.

The feed goes forward for ever: each day it asks for is replayed as of the day after the
event date of the one before (``event_date``), so with fifteen recorded days the 16th day
played is 2012-03-16 in event time; and each round through the days brings new visitors
(``visitor_epoch`` = the round). Event time never goes backwards across days or rounds.
"""

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from clickstream_dagster.event_time import TODAY

# Run statuses (DagsterRunStatus values) as the feed sees them.
WAITING = frozenset({"QUEUED", "NOT_STARTED"})
FAILED = frozenset({"FAILURE", "CANCELED"})
FINISHED = frozenset({"SUCCESS"}) | FAILED

# After this many failed days in a row the feed stops queueing ahead and waits before the
# next one (doubling each time, up to MAX_BACKOFF_S): a dead broker must not spin runs.
FAILURES_BEFORE_BACKOFF = 2
FIRST_BACKOFF_S, MAX_BACKOFF_S = 30.0, 600.0


@dataclass(frozen=True)
class FeedRun:
    run_id: str
    day: str | None
    status: str
    ended_at: float | None = None  # epoch seconds, once finished
    # A re-execution of an earlier run (Dagster's run retries after a crash, or from the UI):
    # it replays that run's day again and does not move the feed on.
    reexecutes: str | None = None
    will_retry: bool = False  # failed, and Dagster will re-execute it
    # As the run's config asked (None: not set, the recorded date / ids).
    event_date: str | None = None
    visitor_epoch: int | None = None


@dataclass(frozen=True)
class FeedStep:
    """What the feed does now: request ``day`` (after run ``after``), or nothing, and why."""

    day: str | None
    reason: str
    after: str | None = None
    event_date: str | None = None  # the date the day is replayed as of (YYYY-MM-DD)
    visitor_epoch: int = 0  # the round of the feed: 0 the first time through the days


def moved_on(newest: "FeedRun | None", day: str, days: Sequence[str], now: float) -> tuple[str, int]:
    """``(event_date, visitor_epoch)`` of ``day`` asked for after the feed's last request
    ``newest``: the day after its event date, and the next round when the days start again.
    The first request plays the first day as recorded."""
    if newest is None:
        return day, 0
    if newest.event_date == TODAY:  # from an earlier setting: the date it was played on
        previous = dt.datetime.fromtimestamp(newest.ended_at or now, dt.UTC).date()
    else:
        try:
            previous = dt.date.fromisoformat(newest.event_date or "")
        except ValueError:  # none (a run from before the feed moved on) or 'recorded': its own day
            previous = dt.date.fromisoformat(newest.day or day) - dt.timedelta(days=0 if newest.day else 1)
    epoch = newest.visitor_epoch or 0
    if day == days[0]:
        epoch += 1
    return (previous + dt.timedelta(days=1)).isoformat(), epoch


def day_after(day: str | None, days: Sequence[str]) -> str:
    """The next day, wrapping after the last; the first one to start with (or after a day that
    is no longer in the dataset)."""
    if day not in days:
        return days[0]
    return days[(days.index(day) + 1) % len(days)]


def failures_in_row(runs: Sequence[FeedRun]) -> int:
    """Finished runs that failed, counted from the newest finished one back to a success."""
    count = 0
    for run in runs:
        if run.status not in FINISHED:
            continue
        if run.status != "FAILURE":
            break
        count += 1
    return count


def backoff_s(failures: int) -> float:
    if failures < FAILURES_BEFORE_BACKOFF:
        return 0.0
    return min(FIRST_BACKOFF_S * 2 ** (failures - FAILURES_BEFORE_BACKOFF), MAX_BACKOFF_S)


def next_step(runs: Sequence[FeedRun], days: Sequence[str], *, queue_ahead: bool, now: float) -> FeedStep:
    """The feed's next move, given its runs newest first.

    One day is always up next behind the day being replayed (``queue_ahead``, when the instance
    queues runs into one topic one at a time): launched while that one plays, it waits in its
    own process for it to finish (``after_run``), so its first page view follows the other's
    last one after the recorded gap. Never two. Without that guarantee, the next day is requested
    only once no feed run is in progress.
    """
    waiting = [run for run in runs if run.status in WAITING]
    if waiting:
        run = waiting[0]
        return FeedStep(None, f"{run.day} is queued next (run {run.run_id[:8]})")
    newest = next((run for run in runs if run.reexecutes is None), None)  # the feed's last request
    day = day_after(newest.day if newest else None, days)
    failures = failures_in_row(runs)
    in_progress = [run for run in runs if run.status not in FINISHED]
    if in_progress and (not queue_ahead or failures >= FAILURES_BEFORE_BACKOFF):
        run = in_progress[0]
        return FeedStep(None, f"{run.day} is replaying (run {run.run_id[:8]}); {day} follows when it ends")
    if len(in_progress) > 1:
        run, playing = in_progress[0], in_progress[1]
        return FeedStep(
            None, f"{run.day} is up next (run {run.run_id[:8]}), waiting for {playing.day} to end"
        )
    wait_s = backoff_s(failures)
    last_end = max((run.ended_at or 0.0 for run in runs if run.status in FINISHED), default=0.0)
    if wait_s and now < last_end + wait_s:
        return FeedStep(
            None,
            f"the last {failures} days failed; {day} starts in {last_end + wait_s - now:.0f} s "
            "(is the broker reachable? see the failed runs)",
        )
    event_date, epoch = moved_on(newest, day, days, now)
    as_of = f" as of {event_date}, visitor epoch {epoch}" if event_date != day or epoch else ""
    if newest is None:
        return FeedStep(day, f"the feed starts with {day}{as_of}", event_date=event_date, visitor_epoch=epoch)
    return FeedStep(
        day,
        f"{day}{as_of} follows {newest.day} (run {newest.run_id[:8]})",
        after=newest.run_id,
        event_date=event_date,
        visitor_epoch=epoch,
    )


def newly_finished(runs: Sequence[FeedRun], reported: str | None) -> list[FeedRun]:
    """Finished runs newer than the run ``reported`` (the newest one already reported), oldest
    first. Nothing before a first report: ``reported`` None means the feed just started."""
    if reported is None:
        return []
    out = []
    for run in runs:
        if run.run_id == reported:
            break
        if run.status in FINISHED:
            out.append(run)
    return out[::-1]


def failure_note(run: FeedRun, days: Sequence[str]) -> str:
    """What the feed says when a day did not complete: it goes on with the next one."""
    retried = "; Dagster re-executes it" if run.will_retry else ""
    return (
        f"{run.day} (run {run.run_id[:8]}) ended {run.status}{retried}; the feed goes on with "
        f"{day_after(run.day, days)}"
    )


def feed_run_config(environ: Mapping[str, str], config_keys: set[str], default_topic: str) -> dict:
    """The click_data config of every feed run, from the REPLAY_FEED_* variables.

    Original timing at REPLAY_FEED_SPEED into REPLAY_FEED_TOPIC; REPLAY_FEED_CONFIG (a JSON
    object) adds or overrides any other replay setting, e.g. ``{"max_delay_s": 2}``. A bad value
    stops the code location from loading, naming the variable.
    """
    try:
        speed = float(environ.get("REPLAY_FEED_SPEED") or 1.0)
    except ValueError:
        raise ValueError(
            f"REPLAY_FEED_SPEED={environ['REPLAY_FEED_SPEED']!r}: expected a number > 0"
        ) from None
    if not speed > 0:
        raise ValueError(f"REPLAY_FEED_SPEED={speed:g}: expected a number > 0")
    config = {
        "topic": environ.get("REPLAY_FEED_TOPIC") or default_topic,
        "pacing": "original",
        "speed": speed,
        # A day comes round again every cycle: played whole, even where its last play did not
        # finish (a failed run's own re-execution still resumes it: same replay).
        "restart": True,
    }
    raw = environ.get("REPLAY_FEED_CONFIG")
    if raw:
        try:
            extra = json.loads(raw)
        except ValueError as error:
            raise ValueError(f"REPLAY_FEED_CONFIG is not JSON ({error}): {raw!r}") from None
        if not isinstance(extra, dict):
            raise ValueError(f"REPLAY_FEED_CONFIG must be a JSON object of replay settings, got {raw!r}")
        unknown = sorted(set(extra) - config_keys)
        if unknown:
            raise ValueError(
                f"REPLAY_FEED_CONFIG: unknown replay settings {unknown}; known: {sorted(config_keys)}"
            )
        if extra.get("resume"):
            del config["restart"]  # resume instead: they exclude each other
        config |= extra
    return config
