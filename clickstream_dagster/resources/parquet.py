"""Partitioned Parquet storage for the prepared days, on dagster-polars."""

from typing import Any

import polars as pl
from dagster import InputContext, OutputContext
from dagster_polars import PolarsParquetIOManager

# Private, but it is the one place dagster-polars maps fsspec credentials to Polars'.
from dagster_polars.io_managers.parquet import _remap_fsspec_storage_options


class DailyParquetIOManager(PolarsParquetIOManager):
    """dagster-polars' Parquet IO manager, with two changes.

    - A single run may cover a range of days (one scan of the log prepares them all),
      so a partitioned output is a ``{partition_key: frame}`` dict written one file per
      day. The stock UPath IO manager refuses outputs spanning several partitions.
    - Loading uses Polars 2's ``scan_parquet`` signature: dagster-polars 0.27 still
      passes ``rechunk=``/``retries=``, which Polars 2 removed.

    Files land at ``<base_dir>/<asset key>/<partition key>.parquet``; ``base_dir`` may be
    local or an object-store URL (``s3://bucket/prefix``), or unset for the instance's
    storage directory.
    """

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        if not context.has_asset_partitions:
            return super().handle_output(context, obj)
        if not isinstance(obj, dict):
            raise TypeError(
                f"{context.asset_key.to_user_string()}: a partitioned output must be a "
                f"{{partition_key: frame}} dict, got {type(obj).__name__}"
            )
        paths = self._get_paths_for_partitions(context)
        if set(obj) != set(paths):
            raise ValueError(
                f"{context.asset_key.to_user_string()}: output has partitions {sorted(obj)} "
                f"but the run targets {sorted(paths)}"
            )
        for partition_key, frame in obj.items():
            path = paths[partition_key]
            self.make_directory(path.parent)
            if isinstance(frame, pl.LazyFrame):
                self.sink_df_to_path(context, frame, path)
            else:
                self.write_df_to_path(context, frame, path)

    def scan_df_from_path(self, path: Any, context: InputContext, partition_key: str | None = None) -> pl.LazyFrame:
        return pl.scan_parquet(
            str(path), storage_options=_remap_fsspec_storage_options(self.storage_options)
        )
