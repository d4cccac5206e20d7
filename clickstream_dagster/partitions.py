"""The dataset's UTC days: one home for the partitions every asset, job, schedule and sensor uses.

The days are a setting, ``CLICKSTREAM_DAYS=FIRST..LAST`` (default the sample's fifteen days,
2012-03-01..2012-03-15), read and validated when the definitions load: a bad value stops the
code location from loading with one message naming the setting and its form.
"""

import os

from dagster import DailyPartitionsDefinition

from clickstream_dagster.cleaning import DAYS_SETTING, DayWindow

DATASET_WINDOW = DayWindow.parse(os.environ.get(DAYS_SETTING))

# end_date is exclusive: the keys are DATASET_WINDOW.days(), first to last.
clickstream_days = DailyPartitionsDefinition(
    start_date=DATASET_WINDOW.first.isoformat(), end_date=DATASET_WINDOW.end.isoformat()
)
