"""The dataset's fifteen UTC days: one home for the partitions every asset, job and schedule uses."""

from datetime import date

from dagster import DailyPartitionsDefinition

from clickstream_dagster.cleaning import DayWindow

DATASET_WINDOW = DayWindow(first=date(2012, 3, 1), end=date(2012, 3, 16))

# end_date is exclusive: this yields the 15 keys 2012-03-01 .. 2012-03-15.
clickstream_days = DailyPartitionsDefinition(
    start_date=DATASET_WINDOW.first.isoformat(), end_date=DATASET_WINDOW.end.isoformat()
)
