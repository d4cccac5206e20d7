"""Where a replay starts, and who holds a topic: the pure rules behind resume and the lease."""

import json
from dataclasses import replace

import pytest

from clickstream_dagster.checkpoints import (
    Checkpoint,
    ReplayStatus,
    TopicBusy,
    UnfinishedReplay,
    abandoned_reason,
    next_attempt,
    plan_replay,
    previous_replay,
    transactional_id,
)

NOW = 1_000_000_000


def checkpoint(replay_id="A", day="2012-03-05", next_row=10, status=ReplayStatus.RUNNING, age_s=1.0, topic="click-data"):
    return Checkpoint(topic, day, replay_id, f"run-{replay_id}", next_row, 100, status, NOW - int(age_s * 1000), "host pid 1")


def plan(checkpoints, replay_id="B", day="2012-03-05", resume=False, restart=False):
    return plan_replay(
        checkpoints, topic="click-data", day=day, replay_id=replay_id, resume=resume, restart=restart, now_ms=NOW, lease_s=40
    )


def test_a_checkpoint_round_trips_through_its_bytes():
    record = checkpoint()
    assert Checkpoint.from_bytes(record.to_bytes()) == record
    assert record.key == b"click-data/2012-03-05"


def test_the_transactional_id_follows_from_the_topic():
    assert transactional_id("click-data") == "clickstream-replay-click-data"


def test_a_fresh_launch_starts_at_the_first_row_after_a_finished_replay_of_the_day_or_none():
    assert plan([]).start_row == 0
    # Schedules and the feed replay finished days again: a new replay of the whole day.
    assert plan([checkpoint(next_row=100, status=ReplayStatus.FINISHED)]).start_row == 0


@pytest.mark.parametrize(
    "unfinished",
    [checkpoint(next_row=37, status=ReplayStatus.STOPPED), checkpoint(next_row=12, age_s=3600)],  # stopped; killed
    ids=["stopped", "killed"],
)
def test_a_fresh_launch_after_an_unfinished_replay_fails_naming_it_and_both_choices(unfinished):
    with pytest.raises(UnfinishedReplay) as raised:
        plan([unfinished])
    message = str(raised.value)
    assert "run run-A" in message and f"at row {unfinished.next_row}/100" in message
    assert "resume: true" in message and "restart: true" in message and "nothing was sent" in message
    assert raised.value.unfinished == unfinished


def test_restart_replays_an_unfinished_day_from_the_first_row():
    assert plan([checkpoint(next_row=37, status=ReplayStatus.STOPPED)], restart=True) == plan([], restart=True)
    assert plan([checkpoint(next_row=37, status=ReplayStatus.STOPPED)], restart=True).start_row == 0


def test_an_unfinished_replay_that_committed_no_row_needs_no_choice():
    assert plan([checkpoint(next_row=0, status=ReplayStatus.STOPPED)]).start_row == 0


def test_a_re_execution_keeps_resuming_whatever_it_was_launched_with():
    mine = checkpoint(replay_id="B", next_row=42, status=ReplayStatus.STOPPED)
    assert plan([mine], replay_id="B").start_row == 42
    assert plan([mine], replay_id="B", restart=True).start_row == 42


def test_resume_and_restart_exclude_each_other():
    with pytest.raises(ValueError, match="choose one"):
        plan([], resume=True, restart=True)


def test_a_re_execution_continues_its_own_replay_and_takes_over_from_a_live_zombie():
    mine = checkpoint(replay_id="B", next_row=42, age_s=0.5)  # its earlier attempt still beats
    result = plan([mine], replay_id="B")
    assert (result.start_row, result.resumed) == (42, mine)


def test_a_finished_replay_re_executed_sends_nothing_more():
    assert plan([checkpoint(replay_id="B", next_row=100, status=ReplayStatus.FINISHED)], replay_id="B").start_row == 100


def test_resume_continues_the_days_last_unfinished_replay_or_starts_fresh():
    stopped = checkpoint(replay_id="A", next_row=37, status=ReplayStatus.STOPPED)
    assert plan([stopped], resume=True).start_row == 37
    dead = checkpoint(replay_id="A", next_row=12, age_s=3600)  # left RUNNING by a kill -9
    assert plan([dead], resume=True).start_row == 12
    finished = checkpoint(replay_id="A", status=ReplayStatus.FINISHED)
    assert plan([finished], resume=True).start_row == 0
    other_day = checkpoint(replay_id="A", day="2012-03-04", status=ReplayStatus.STOPPED)
    assert plan([other_day], resume=True).start_row == 0


def test_another_live_replay_of_the_topic_holds_it_whatever_its_day():
    holder = checkpoint(replay_id="A", day="2012-03-01", age_s=2)
    with pytest.raises(TopicBusy, match=r"topic 'click-data' is being written by replay A of 2012-03-01 .*row 10/100"):
        plan([holder])


def test_a_silent_replay_holds_the_topic_no_longer_after_the_lease():
    # (then launching needs a choice: the day's replay is unfinished)
    assert plan([checkpoint(replay_id="A", age_s=41)], resume=True).start_row == 10
    assert plan([checkpoint(replay_id="A", status=ReplayStatus.STOPPED, age_s=0)], restart=True).start_row == 0


def test_replays_into_other_topics_do_not_matter():
    elsewhere = checkpoint(replay_id="A", topic="other-topic", age_s=0)
    assert plan([elsewhere]).start_row == 0


def abandoned(record, run_id="run-A", run_quiet_s=0.0):
    return abandoned_reason(record, run_id, now_ms=NOW, lease_s=40, run_quiet_s=run_quiet_s)


def test_a_run_whose_replay_still_commits_is_left_alone():
    assert abandoned(checkpoint(age_s=39)) is None
    assert abandoned(checkpoint(age_s=39, status=ReplayStatus.FINISHED)) is None


def test_a_run_whose_replay_stopped_committing_is_abandoned_naming_row_and_process():
    reason = abandoned(checkpoint(age_s=41, next_row=37))
    assert reason is not None and "committed nothing for 41 s" in reason and "37/100" in reason
    assert "host pid 1" in reason


def test_a_run_whose_step_ended_but_never_the_run_is_abandoned():
    for status in (ReplayStatus.FINISHED, ReplayStatus.STOPPED):
        reason = abandoned(checkpoint(age_s=60, status=status))
        assert reason is not None and f"{status.value} at row 10/100 60 s ago" in reason


def test_runs_with_no_checkpoint_of_their_own_cannot_be_judged():
    assert abandoned(None) is None
    # Another replay's checkpoint (this run may be waiting for the topic).
    assert abandoned(checkpoint(replay_id="B", age_s=600), run_id="run-A", run_quiet_s=600) is None


def test_a_run_taken_over_by_a_later_attempt_is_abandoned_once_silent():
    later = replace(checkpoint(age_s=1), run_id="run-A2", run_ids=("run-A", "run-A2"))
    assert abandoned(later, run_quiet_s=10) is None  # a live fenced run still reports its failure
    reason = abandoned(later, run_quiet_s=45)
    assert reason is not None and "(run run-A2) took its replay over" in reason


def test_an_attempt_counts_on_from_an_earlier_attempt_of_its_run_adding_the_time_nothing_was_delivered():
    first = replace(checkpoint(next_row=300, status=ReplayStatus.STOPPED), progress_ms=NOW - 39_000, heartbeat_ms=NOW - 20_000)
    assert next_attempt(first, "run-A", NOW) == (2, 39_000)  # from its last delivery, not its stop
    second = replace(first, attempt=2, stall_ms=39_000, progress_ms=NOW - 4_000)
    assert next_attempt(second, "run-A", NOW) == (3, 43_000)
    assert Checkpoint.from_bytes(second.to_bytes()) == second


def test_another_run_counts_its_own_attempts():
    assert next_attempt(None, "run-B", NOW) == (1, 0)
    assert next_attempt(replace(checkpoint(), attempt=3, stall_ms=5_000), "run-B", NOW) == (1, 0)  # a resume, a re-execution


def test_where_a_replay_ended_survives_the_round_trip_and_older_records_read_as_unknown():
    record = replace(checkpoint(status=ReplayStatus.FINISHED), last_due_ms=5_000, last_sent_ms=5_040, last_event_ms=86_399_000)
    assert Checkpoint.from_bytes(record.to_bytes()) == record
    older = json.loads(record.to_bytes())
    for name in ("last_due_ms", "last_sent_ms", "last_event_ms"):
        del older[name]
    assert Checkpoint.from_bytes(json.dumps(older).encode()).last_due_ms == 0


def test_the_replay_a_following_one_waits_for_is_found_by_its_id_and_topic():
    mine = checkpoint(replay_id="A", day="2012-03-04")
    others = [checkpoint(replay_id="B", day="2012-03-05"), checkpoint(replay_id="A", topic="other", day="2012-03-03")]
    assert previous_replay([*others, mine], "click-data", "A") == mine
    assert previous_replay(others, "click-data", "A") is None


def test_a_feed_run_waiting_for_the_day_before_is_not_abandoned():
    # Its day's checkpoint is an earlier round's, long finished: not its own.
    earlier_round = checkpoint(replay_id="A", status=ReplayStatus.FINISHED, age_s=86_400)
    assert abandoned(earlier_round, run_id="run-waiting", run_quiet_s=86_400) is None
    assert abandoned(None, run_id="run-waiting", run_quiet_s=86_400) is None
