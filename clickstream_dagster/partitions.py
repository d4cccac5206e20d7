"""The dataset's UTC days: one home for the partitions every asset, job, schedule and sensor uses.

The days are a setting, ``CLICKSTREAM_DAYS=FIRST..LAST`` (default the sample's fifteen days,
2012-03-01..2012-03-15), read and validated when the definitions load: a bad value stops the
code location from loading with one message naming the setting and its form.
"""

import os
from collections.abc import Sequence

import click
from dagster import DailyPartitionsDefinition, PartitionKeyRange

from clickstream_dagster.cleaning import DAYS_SETTING, DayWindow

DATASET_WINDOW = DayWindow.parse(os.environ.get(DAYS_SETTING))


class DayOutsideWindow(click.ClickException):
    """A day that is not one of the dataset's. A ClickException because ``dagster asset
    materialize`` then prints its message as one ``Error:`` line instead of a traceback."""


class DatasetDays(DailyPartitionsDefinition):
    """Daily partitions that refuse a day outside the window naming the valid range, where
    Dagster says ``DagsterInvalidSubsetError`` (the CLI, when it validates the key) or
    ``CheckError: Invariant failed`` (a run launched with such a day, at its first step)."""

    def validate_partition_key(self, partition_key: str, context) -> None:
        self._refuse_outside(partition_key)
        super().validate_partition_key(partition_key, context)

    def get_partition_keys_in_range(self, partition_key_range: PartitionKeyRange) -> Sequence[str]:
        self._refuse_outside(partition_key_range.start, partition_key_range.end)
        return super().get_partition_keys_in_range(partition_key_range)

    def _refuse_outside(self, *days: str) -> None:
        for day in days:
            if not self.has_partition_key(day):
                raise DayOutsideWindow(
                    f"{day} is not one of the days of this deployment: {DAYS_SETTING}={DATASET_WINDOW} "
                    f"(set {DAYS_SETTING} to the days of your log)"
                )


# end_date is exclusive: the keys are DATASET_WINDOW.days(), first to last.
clickstream_days = DatasetDays(start_date=DATASET_WINDOW.first.isoformat(), end_date=DATASET_WINDOW.end.isoformat())
