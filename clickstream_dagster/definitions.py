"""The whole project at a glance: what is computed, with what, and when.

prepare  (assets/prepare.py)  data/clickstream.csv -> clickstream_events (15 daily Parquet
                              partitions) + clickstream_rejects, with asset checks
"""

import os

from dagster import Definitions

from clickstream_dagster.assets import prepare
from clickstream_dagster.resources.log_file import DEFAULT_LOG_PATH, ClickstreamLogFile
from clickstream_dagster.resources.parquet import DailyParquetIOManager

defs = Definitions(
    assets=[prepare.clickstream_events, prepare.clickstream_rejects],
    asset_checks=[prepare.every_line_accounted_for, *prepare.EVENTS_CHECKS],
    resources={
        "clickstream_log": ClickstreamLogFile(path=os.environ.get("CLICKSTREAM_CSV", str(DEFAULT_LOG_PATH))),
        # Unset: the Dagster instance's storage directory; or a local path / s3:// URL.
        "parquet_io_manager": DailyParquetIOManager(base_dir=os.environ.get("CLICKSTREAM_STORAGE_DIR")),
    },
)
