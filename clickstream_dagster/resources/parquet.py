"""Partitioned Parquet storage for the prepared days, on dagster-polars."""

import io
import os
import uuid
from typing import Any

import polars as pl
from dagster import Failure, InputContext, MetadataValue, OutputContext
from dagster_polars import PolarsParquetIOManager

# Private, but it is the one place dagster-polars maps fsspec credentials to Polars'.
from dagster_polars.io_managers.parquet import _remap_fsspec_storage_options

_LOCAL_PROTOCOLS = ("", "file", "local")


class DailyParquetIOManager(PolarsParquetIOManager):
    """dagster-polars' Parquet IO manager, with three changes.

    - A single run may cover a range of days (one scan of the log prepares them all),
      so a partitioned output is a ``{partition_key: frame}`` dict written one file per
      day. The stock UPath IO manager refuses outputs spanning several partitions.
    - Every file replaces the previous version atomically, so a killed prepare leaves
      each day as it was and a reader (a replay) never sees half a file: on a local
      filesystem the file is written under a hidden temporary name in the same
      directory, then renamed over the old one; on object storage it is one PUT of the
      complete file.
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
        write = {
            "compression": options.get("compression", "zstd"),
            "compression_level": options.get("compression_level"),
            "statistics": options.get("statistics", False),
            "row_group_size": options.get("row_group_size"),
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
        temporaries = {}
        for path in local:
            directory, name = os.path.split(os.fspath(path))
            _remove_stale_temporaries(directory, name)
            # Hidden (dot) name: Parquet dataset readers skip it; the pid says whose it is.
            temporaries[path] = os.path.join(directory, f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            # All files in one Polars call: the days are written side by side.
            pl.collect_all([frame.sink_parquet(temporaries[path], lazy=True, **write) for path, frame in local.items()])
            for path, temporary in temporaries.items():
                os.replace(temporary, os.fspath(path))
        finally:
            for temporary in temporaries.values():
                if os.path.exists(temporary):
                    os.unlink(temporary)

    def load_from_path(self, context: InputContext, path: Any) -> Any:
        if not path.exists():
            day = path.stem if context.has_asset_partitions else None
            message = not_prepared_message(context.asset_key.to_user_string(), path, self.base_dir, day)
            if (context.definition_metadata or {}).get("allow_missing_partitions"):
                raise FileNotFoundError(message)  # the caller skips missing days
            # Not retried: the file will not appear by itself.
            raise Failure(message, metadata={"path": MetadataValue.path(str(path))}, allow_retries=False)
        return super().load_from_path(context, path)

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


def _remove_stale_temporaries(directory: str, name: str) -> None:
    """Delete temporaries of ``name`` left by writers that no longer run (a kill -9)."""
    prefix = f".{name}."
    try:
        entries = os.listdir(directory)
    except FileNotFoundError:
        return
    for entry in entries:
        if not (entry.startswith(prefix) and entry.endswith(".tmp")):
            continue
        pid = entry[len(prefix) :].split(".", 1)[0]
        if pid.isdigit() and not _running(int(pid)):
            try:
                os.unlink(os.path.join(directory, entry))
            except FileNotFoundError:
                pass


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
