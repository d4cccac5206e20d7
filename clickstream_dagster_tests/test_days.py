"""CLICKSTREAM_DAYS: the dataset's days as a setting, validated when the definitions load."""

import os
import subprocess
import sys
from datetime import date, datetime, timedelta, timezone

import pytest
from dagster import PartitionKeyRange
from dagster._core.definitions.partitions.context import partition_loading_context

from clickstream_dagster.cleaning import MAX_WINDOW_DAYS, DayWindow
from clickstream_dagster.cycle import cycle_day
from clickstream_dagster.partitions import DATASET_WINDOW, DayOutsideWindow, clickstream_days

FORM = "expected FIRST..LAST, two UTC days as YYYY-MM-DD, both included (e.g. 2026-11-01..2026-11-30)"


def test_a_window_names_its_first_and_last_day_both_included():
    window = DayWindow.parse("2026-11-01..2026-11-30")
    assert (window.first, window.end, window.last) == (date(2026, 11, 1), date(2026, 12, 1), date(2026, 11, 30))
    assert len(window.days()) == 30 and str(window) == "2026-11-01..2026-11-30"
    assert DayWindow.parse(" 2026-11-01 .. 2026-11-01 ").days() == ["2026-11-01"]


@pytest.mark.parametrize("unset", [None, "", "  "])
def test_unset_is_the_samples_fifteen_days(unset):
    window = DayWindow.parse(unset)
    assert window.days() == [f"2012-03-{d:02d}" for d in range(1, 16)]


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("2026-11", "not two days joined by '..'"),
        ("2026-11-01..2026-11-02..2026-11-03", "not two days joined by '..'"),
        ("2026-11-01...2026-11-30", "'.2026-11-30' is not a day"),
        ("2026-11-31..2026-12-05", "'2026-11-31' is not a day"),
        ("20261101..20261130", "'20261101' is not a day"),
        ("2026-11-30..2026-11-01", "the last day 2026-11-01 is before the first 2026-11-30"),
        ("2000-01-01..2099-12-31", f"36525 days, more than the {MAX_WINDOW_DAYS} allowed"),
    ],
)
def test_a_bad_window_is_refused_naming_the_setting_the_value_and_the_form(value, problem):
    with pytest.raises(ValueError) as error:
        DayWindow.parse(value)
    assert str(error.value) == f"CLICKSTREAM_DAYS={value!r}: {problem}; {FORM}"


def test_the_partitions_are_the_windows_days():
    assert clickstream_days.get_partition_keys() == DATASET_WINDOW.days()


@pytest.mark.parametrize("day", ["2013-01-01", "2012-02-29", "yesterday"])
def test_a_day_outside_the_window_is_refused_naming_the_window(day):
    refused = f"{day} is not one of the days of this deployment: CLICKSTREAM_DAYS=2012-03-01..2012-03-15 "
    with partition_loading_context() as context, pytest.raises(DayOutsideWindow, match=refused):
        clickstream_days.validate_partition_key(day, context)
    with pytest.raises(DayOutsideWindow, match=refused):
        clickstream_days.get_partition_keys_in_range(PartitionKeyRange("2012-03-14", day))
    clickstream_days.validate_partition_key("2012-03-15", context)
    assert clickstream_days.get_partition_keys_in_range(PartitionKeyRange("2012-03-14", "2012-03-15")) == [
        "2012-03-14", "2012-03-15",
    ]  # fmt: skip


def _load_definitions(days: str) -> subprocess.CompletedProcess:
    env = os.environ | {"CLICKSTREAM_DAYS": days}
    code = "from clickstream_dagster.definitions import defs; print(defs.get_job_def('replay_clickstream').partitions_def.get_partition_keys())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


def test_the_setting_is_read_and_validated_when_the_definitions_load():
    loaded = _load_definitions("2026-11-01..2026-11-03")
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert loaded.stdout.strip() == "['2026-11-01', '2026-11-02', '2026-11-03']"
    refused = _load_definitions("2026-11-03..2026-11-01")
    assert refused.returncode != 0
    assert refused.stderr.strip().splitlines()[-1] == (
        f"ValueError: CLICKSTREAM_DAYS='2026-11-03..2026-11-01': the last day 2026-11-01 is before the first 2026-11-03; {FORM}"
    )


def test_the_cycle_starts_its_round_robin_at_the_first_day_of_any_window():
    days = DayWindow.parse("2026-11-01..2026-11-04").days()
    first = datetime(2026, 11, 1, tzinfo=timezone.utc)
    picked = [cycle_day(first + timedelta(days=d), 86400, days) for d in range(5)]
    assert picked == ["2026-11-01", "2026-11-02", "2026-11-03", "2026-11-04", "2026-11-01"]
