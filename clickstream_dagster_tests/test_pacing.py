"""The pacing schedule as a pure function, with exact expectations."""

import re

import numpy as np
import pytest

from clickstream_dagster.pacing import Pacing, PacingError, PacingMode, boundary_start_ms, boundary_wait_s, send_offsets

TS = np.array([100, 100, 103, 123, 124], dtype=np.int64)  # gaps 0, 3, 20, 1


def test_original_keeps_recorded_gaps_clamped_to_ten_seconds():
    assert send_offsets(TS, Pacing(mode="original")).tolist() == [0, 0, 3, 13, 14]


def test_original_divides_gaps_by_speed_before_clamping():
    assert send_offsets(TS, Pacing(mode="original", speed=2)).tolist() == [0, 0, 1.5, 11.5, 12]


def test_original_clamps_to_min_and_max_delay():
    pacing = Pacing(mode="original", min_delay_s=0.5, max_delay_s=2)
    assert send_offsets(TS, pacing).tolist() == [0, 0.5, 2.5, 4.5, 5.5]


def test_fixed_sends_one_message_per_interval_whatever_the_timestamps():
    assert send_offsets(TS, Pacing(mode="fixed", interval_ms=200)).tolist() == pytest.approx([0, 0.2, 0.4, 0.6, 0.8])


def test_fixed_is_the_default_at_200_ms():
    assert Pacing().mode == PacingMode.FIXED
    assert send_offsets(TS[:3], Pacing()).tolist() == pytest.approx([0, 0.2, 0.4])


def test_max_without_rate_sends_everything_at_once():
    assert send_offsets(TS, Pacing(mode="max")).tolist() == [0, 0, 0, 0, 0]
    assert not Pacing(mode="max").is_paced


def test_max_rate_spaces_messages_evenly():
    assert send_offsets(TS, Pacing(mode="max", max_rate=4)).tolist() == [0, 0.25, 0.5, 0.75, 1.0]
    assert Pacing(mode="max", max_rate=4).is_paced


@pytest.mark.parametrize("mode", list(PacingMode))
def test_empty_and_single_message_schedules(mode):
    assert send_offsets(np.array([], dtype=np.int64), Pacing(mode=mode)).tolist() == []
    assert send_offsets(np.array([5]), Pacing(mode=mode)).tolist() == [0]


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"speed": 0}, "speed=0"),
        ({"speed": -1}, "speed=-1"),
        ({"speed": float("nan")}, "speed=nan"),
        ({"min_delay_s": -0.1}, "min_delay_s=-0.1"),
        ({"min_delay_s": 5, "max_delay_s": 1}, "max_delay_s=1"),
        ({"interval_ms": -5}, "interval_ms=-5"),
        ({"max_rate": 0}, "max_rate=0"),
        # Each setting is bounded: no wait longer than a day, so no schedule overflows a sleep.
        ({"interval_ms": 1e15}, "interval_ms=1000000000000000.0"),
        ({"interval_ms": float("inf")}, "interval_ms=inf"),
        ({"interval_ms": 86_400_001}, "interval_ms=86400001"),
        ({"max_delay_s": 1e12}, "max_delay_s=1000000000000.0"),
        ({"min_delay_s": 1e12, "max_delay_s": 1e12}, "min_delay_s=1000000000000.0"),
        ({"speed": 1e-300}, "speed=1e-300"),
        ({"speed": 1e300}, "speed=1e+300"),
        ({"max_rate": 1e-9}, "max_rate=1e-09"),
        ({"max_rate": float("inf")}, "max_rate=inf"),
    ],
)
def test_bad_settings_are_refused_naming_the_setting(settings, named):
    with pytest.raises(PacingError, match=re.escape(named)):
        Pacing(**settings)


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="'slow'"):
        Pacing(mode="slow")


def test_the_bounds_themselves_are_accepted():
    day = Pacing(mode="original", min_delay_s=86_400, max_delay_s=86_400, speed=1e-6)
    assert send_offsets(TS[:2], day).tolist() == [0, 86_400]
    assert send_offsets(TS[:2], Pacing(mode="fixed", interval_ms=86_400_000)).tolist() == [0, 86_400]
    assert send_offsets(TS[:2], Pacing(mode="max", max_rate=1 / 86_400)).tolist() == [0, 86_400]


def test_an_out_of_range_setting_says_what_range_it_takes():
    with pytest.raises(PacingError, match=r"interval_ms=.* expected a number from 0 to 86400000 \(a day\)"):
        Pacing(interval_ms=1e15)


def test_the_wait_between_two_replays_is_the_recorded_gap_clamped_at_the_speed():
    original = Pacing(mode="original", speed=2.0, min_delay_s=0.5, max_delay_s=3.0)
    assert boundary_wait_s(100.0, 104.0, original) == pytest.approx(2.0)  # 4 s recorded, at speed 2
    assert boundary_wait_s(100.0, 200.0, original) == pytest.approx(3.0)  # clamped to max_delay_s
    assert boundary_wait_s(100.0, 100.2, original) == pytest.approx(0.5)  # ... and to min_delay_s
    assert boundary_wait_s(100.0, 50.0, original) == pytest.approx(0.5)  # event time went back: min_delay_s
    assert boundary_wait_s(100.0, 104.0, Pacing(mode="fixed", interval_ms=250)) == pytest.approx(0.25)
    assert boundary_wait_s(100.0, 104.0, Pacing(mode="max")) == 0.0


def test_a_following_replay_starts_at_the_previous_last_due_time_plus_the_gap_or_now_if_past():
    pacing = Pacing(mode="original", speed=1.0, max_delay_s=10.0)
    assert boundary_start_ms(50_000, 86_395.0, 86_401.5, pacing, now_ms=40_000) == (56_500, pytest.approx(6.5))
    assert boundary_start_ms(50_000, 86_395.0, 86_401.5, pacing, now_ms=60_000) == (60_000, pytest.approx(6.5))
