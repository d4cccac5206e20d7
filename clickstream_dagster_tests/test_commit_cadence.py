"""The commit cadence policy: when a replay commits, from the last commit's age and what commits take."""

import pytest

from clickstream_dagster.commit_cadence import RECENT_COMMITS, CommitCadence


def cadence() -> CommitCadence:
    return CommitCadence(commit_every_s=0.1, commit_share=0.05, heartbeat_s=5.0)


def test_before_any_commit_every_wait_can_hold_one_and_the_interval_is_commit_every_s():
    fresh = cadence()
    assert fresh.typical_s == 0.0 and fresh.interval_s == 0.1
    assert fresh.fits(0.001)
    assert not fresh.fits(0.0)


def test_a_wait_holds_a_commit_only_when_it_is_half_as_long_again_as_the_typical_commit():
    c = cadence()
    c.took(0.02)
    assert not c.fits(0.03)
    assert c.fits(0.031)


def test_fast_commits_keep_the_interval_at_commit_every_s():
    c = cadence()
    for _ in range(5):
        c.took(0.005)  # 5 ms: 19 of them fit in 100 ms at a 5% share
    assert c.interval_s == 0.1


def test_slow_commits_stretch_the_interval_so_they_take_about_their_share_of_the_time():
    c = cadence()
    c.took(0.05)
    # 50 ms commits at 5% of the time: one every 950 ms of sending.
    assert c.interval_s == pytest.approx(0.95)


def test_one_slow_commit_among_fast_ones_does_not_move_the_typical_commit():
    c = cadence()
    for took in [0.009] * 5 + [0.1] + [0.009] * 3:
        c.took(took)
    assert c.typical_s == pytest.approx(0.009)
    assert c.interval_s == pytest.approx(0.009 * 19)  # the 100 ms commit left no mark


def test_only_the_recent_commits_count():
    c = cadence()
    for _ in range(RECENT_COMMITS):
        c.took(1.0)  # a slow spell ...
    for _ in range(RECENT_COMMITS // 2 + 1):
        c.took(0.01)  # ... over: a majority of the recent ones are fast again
    assert c.typical_s == pytest.approx(0.01)


def test_exactly_once_commits_before_a_wait_whenever_something_is_unreadable():
    c = cadence()
    assert c.due_for_readability(since_commit_s=0.0, unreadable_for_s=0.0, waiting=True)
    assert not c.due_for_readability(since_commit_s=0.0, unreadable_for_s=None, waiting=True)


def test_exactly_once_commits_while_sending_once_the_oldest_unreadable_message_is_an_interval_old():
    c = cadence()
    assert not c.due_for_readability(since_commit_s=1.0, unreadable_for_s=0.099, waiting=False)
    assert c.due_for_readability(since_commit_s=1.0, unreadable_for_s=0.1, waiting=False)


def test_a_heartbeat_commit_comes_every_heartbeat_s_with_nothing_to_make_readable():
    c = cadence()
    assert not c.due_for_readability(since_commit_s=4.99, unreadable_for_s=None, waiting=True)
    assert c.due_for_readability(since_commit_s=5.0, unreadable_for_s=None, waiting=False)
    assert not c.due_for_progress(since_commit_s=4.99, advanced=False)
    assert c.due_for_progress(since_commit_s=5.0, advanced=False)


def test_at_least_once_records_an_advanced_prefix_every_commit_every_s_however_slow_commits_are():
    c = cadence()
    c.took(0.5)  # slow commits stretch the readability interval, not this one
    assert not c.due_for_progress(since_commit_s=0.099, advanced=True)
    assert c.due_for_progress(since_commit_s=0.1, advanced=True)
    assert not c.due_for_progress(since_commit_s=1.0, advanced=False)
