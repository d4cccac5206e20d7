"""Partitioned Parquet storage for the prepared days, on dagster-polars."""

import io
import os
import shutil
from typing import Any

import polars as pl
from dagster import Failure, InputContext, MetadataValue, OutputContext
from dagster_polars import PolarsParquetIOManager

# Private, but it is the one place dagster-polars maps fsspec credentials to Polars'.
from dagster_polars.io_managers.parquet import _remap_fsspec_storage_options

from clickstream_dagster.leftovers import remove_abandoned, temporary_name
from clickstream_dagster.resources.built_defaults import BuiltValuesAreDefaults

_LOCAL_PROTOCOLS = ("", "file", "local")

# Output metadata also written into each file's Parquet key-value metadata, for the accounting
# check: the version of the log the file was read from (files of different prepares can be
# told apart), and the lines inside multi-line records (a quoted field holding a line break).
LOG_VERSION = "log_version"
CONTINUATION_LINES = "continuation_lines"
FILE_METADATA = (LOG_VERSION, CONTINUATION_LINES)


class DailyParquetIOManager(BuiltValuesAreDefaults, PolarsParquetIOManager):
    """dagster-polars' Parquet IO manager, with three changes.

    - A single run may cover a range of days (one scan of the log prepares them all),
      so a partitioned output is a ``{partition_key: frame}`` dict written one file per
      day. The stock UPath IO manager refuses outputs spanning several partitions.
    - Every file replaces the previous version atomically, so a killed prepare leaves
      each day as it was and a reader (a replay) never sees half a file: on a local
      filesystem the file is written into a hidden temporary directory beside it, then
      renamed over the old one; on object storage it is one PUT of the complete file.
      What killed writers left behind is removed at the next write to that directory.
    - An output's ``FILE_METADATA`` entries are written into each of its files (Parquet
      key-value metadata), and ``file_metadata`` reads them back for the accounting check.
    - Loading uses Polars 2's ``scan_parquet`` signature: dagster-polars 0.27 still
      passes ``rechunk=``/``retries=``, which Polars 2 removed; and a file that is not
      there fails once, naming the day, the storage and the command that prepares it.

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
        for path in paths.values():
            self.make_directory(path.parent)
        self._replace(context, {paths[key]: frame.lazy() for key, frame in obj.items()})

    def write_df_to_path(self, context: OutputContext, df: pl.DataFrame, path: Any) -> None:
        self._replace(context, {path: df.lazy()})

    def sink_df_to_path(self, context: OutputContext, df: pl.LazyFrame, path: Any) -> None:
        self._replace(context, {path: df})

    def _replace(self, context: OutputContext, frames: dict[Any, pl.LazyFrame]) -> None:
        """Write each frame to its path, replacing the file there whole."""
        options = context.definition_metadata or {}
        given = context.output_metadata or {}
        in_file = {key: str(getattr(given[key], "value", given[key])) for key in FILE_METADATA if key in given}
        write = {
            "compression": options.get("compression", "zstd"),
            "compression_level": options.get("compression_level"),
            "statistics": options.get("statistics", False),
            "row_group_size": options.get("row_group_size"),
            "metadata": in_file or None,
        }
        local = {path: frame for path, frame in frames.items() if getattr(path, "protocol", "") in _LOCAL_PROTOCOLS}
        for path, frame in frames.items():
            if path not in local:
                # Object storage: an object appears whole when its upload completes.
                buffer = io.BytesIO()
                frame.collect(engine="streaming").write_parquet(buffer, **write)
                path.write_bytes(buffer.getvalue())
        if not local:
            return
        # Each directory gets a hidden temporary directory for this write; the files are renamed
        # out of it. On failure it is removed whole: Polars may still create a file after its
        # error surfaced, which then fails instead of being left behind.
        writing = {}
        for directory in {os.path.dirname(os.fspath(path)) for path in local}:
            remove_abandoned(directory)  # of writers killed earlier
            writing[directory] = os.path.join(directory, temporary_name("writing"))
            os.mkdir(writing[directory])
        temporaries = {
            path: os.path.join(writing[os.path.dirname(os.fspath(path))], os.path.basename(os.fspath(path)))
            for path in local
        }
        try:
            # All files in one Polars call: the days are written side by side.
            pl.collect_all([frame.sink_parquet(temporaries[path], lazy=True, **write) for path, frame in local.items()])
            for path, temporary in temporaries.items():
                os.replace(temporary, os.fspath(path))
        finally:
            for directory in writing.values():
                shutil.rmtree(directory, ignore_errors=True)

    def load_from_path(self, context: InputContext, path: Any) -> Any:
        if not path.exists():
            day = path.stem if context.has_asset_partitions else None
            message = not_prepared_message(context.asset_key.to_user_string(), path, self.base_dir, day)
            if (context.definition_metadata or {}).get("allow_missing_partitions"):
                raise FileNotFoundError(message)  # the caller skips missing days
            # Not retried: the file will not appear by itself.
            raise Failure(message, metadata={"path": MetadataValue.path(str(path))}, allow_retries=False)
        return super().load_from_path(context, path)

    def file_metadata(self, asset: str, partitions: list[str] | None = None) -> dict[str, dict[str, str]]:
        """The ``FILE_METADATA`` written into each file of ``asset``, by file name under the
        storage (``asset/day.parquet`` for ``partitions``, else ``asset.parquet``)."""
        names = [f"{asset}/{key}{self.extension}" for key in partitions] if partitions else [f"{asset}{self.extension}"]
        options = _remap_fsspec_storage_options(self.storage_options)
        found = {}
        for name in names:
            path = self._base_path / name
            if path.exists():
                written = pl.read_parquet_metadata(str(path), storage_options=options)
                found[name] = {key: written[key] for key in FILE_METADATA if key in written}
        return found

    def scan_df_from_path(self, path: Any, context: InputContext, partition_key: str | None = None) -> pl.LazyFrame:
        return pl.scan_parquet(
            str(path), storage_options=_remap_fsspec_storage_options(self.storage_options)
        )


def not_prepared_message(asset: str, path: Any, base_dir: str | None, partition: str | None) -> str:
    """Which day is missing, where it was looked for, and how to prepare it."""
    storage = base_dir or "the Dagster instance's storage directory"
    what = f"{asset} for {partition}" if partition else asset
    select = f"--select {asset} --partition-range {partition}...{partition}" if partition else f"--select {asset}"
    return (
        f"{what} is not prepared: no file {path} in the storage {storage} (CLICKSTREAM_STORAGE_DIR). "
        f"Prepare it first: dagster asset materialize -m clickstream_dagster.definitions {select} "
        "(or every day at once: the prepare_clickstream job)"
    )
