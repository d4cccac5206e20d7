"""Prepare: the raw log cleaned into daily Parquet partitions, and every line not kept.

Thin wiring around ``clickstream_dagster.cleaning``: the assets stage the log, hand the
per-day frames to the IO manager, and report what happened as metadata and log lines.

One scan of the log serves both assets when they run together: the events step, when
it covers every day, leaves the rejects in a file keyed by the log's version (path,
size, modification time, content at both ends, settings); the rejects step, which runs
after it, takes them from there, and scans the log itself only when they are missing.
"""

import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import polars as pl
from dagster import (
    AssetCheckEvaluation,
    AssetCheckResult,
    AssetExecutionContext,
    AssetIn,
    BackfillPolicy,
    DataVersion,
    MetadataValue,
    ObserveResult,
    Output,
    ResourceParam,
    asset_check,
)

from clickstream_dagster.assets.beta_features import observable_source, partitioned_asset_check, single_run_asset
from clickstream_dagster.assets.metadata import counts_table, epoch_text, numeric, preview
from clickstream_dagster.cleaning import (
    PUBLISHED_COLUMNS,
    LogFile,
    StagedLog,
    count_by_reason,
    count_data_lines,
    file_version,
    log_version,
    summarize_days,
)
from clickstream_dagster.leftovers import owner_tag, remove_abandoned, temporary_name
from clickstream_dagster.partitions import DATASET_WINDOW, clickstream_days
from clickstream_dagster.resources.log_file import ClickstreamLogFile
from clickstream_dagster.resources.parquet import CONTINUATION_LINES, LOG_VERSION, DailyParquetIOManager

PREPARE_GROUP = "prepare"

# Where the events step leaves the rejects for the rejects step of the same run.
SHARED_REJECTS_DIR = Path(tempfile.gettempdir()) / "clickstream-prepare"
_LINES_KEY = "clickstream/data_lines"

# Observable, so that Dagster takes its observations (the sensor's, or "Observe" in the UI) as
# its data version: the prepared assets record the sha256 they read, and show "Unsynced" only
# when a later observation has another. (Staleness ignores the observations of a plain
# AssetSpec and takes its version as INITIAL: every prepare looked out of date at once.)
@observable_source(
    name="clickstream_csv",
    group_name=PREPARE_GROUP,
    tags={"dagster/kind/csv": ""},
    required_resource_keys={"clickstream_log"},
    description="The recorded page-view log (CLICKSTREAM_CSV), comma- or tab-separated; its data "
    "version is its sha256, observed by the clickstream_log_changed sensor.",
)
def clickstream_csv(context) -> ObserveResult:
    version = file_version(Path(context.resources.clickstream_log.path))
    return ObserveResult(data_version=DataVersion(version["sha256"]), metadata=log_metadata(version))


def log_metadata(version: dict) -> dict:
    """What an observation of the log shows, from ``cleaning.file_version``."""
    return {"sha256": version["sha256"], "size_bytes": version["size"], "path": version["path"]}


def _shared_rejects(log: LogFile, clickstream_log: ClickstreamLogFile) -> Path:
    # Named after the log's path as well as its version: prepares of other logs on this machine
    # (another code location, another test session) share the directory and keep their files.
    where = hashlib.sha256(str(log.path.resolve()).encode()).hexdigest()[:12]
    key = log_version(log, DATASET_WINDOW, clickstream_log.max_line_bytes)
    return SHARED_REJECTS_DIR / f"rejects-{where}-{key}.parquet"


def _share_rejects(path: Path, rejects: pl.DataFrame, staged: StagedLog) -> None:
    """Write atomically, and drop what earlier versions of the same log left behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    same_log = path.name.rsplit("-", 1)[0]  # rejects-<path hash>
    for stale in path.parent.glob(f"{same_log}-*.parquet"):
        if stale != path:
            stale.unlink(missing_ok=True)
    remove_abandoned(path.parent)
    temporary = path.with_name(temporary_name(path.name))
    metadata = {_LINES_KEY: str(staged.lines), LOG_VERSION: staged.version, CONTINUATION_LINES: str(staged.continuation_lines)}
    rejects.write_parquet(temporary, compression="lz4", metadata=metadata)
    os.replace(temporary, path)


def _staging_directory() -> tempfile.TemporaryDirectory:
    """Where a scan spills, named for its process: a killed prepare's is removed by the next."""
    remove_abandoned(tempfile.gettempdir())
    return tempfile.TemporaryDirectory(prefix=f"clickstream-staging.{owner_tag()}.", suffix=".tmp")


def _log_counts(context: AssetExecutionContext, lines: int, rejects: dict[str, int], continuation: int) -> None:
    rejected = sum(rejects.values())
    by_reason = ", ".join(f"{reason} {n:,}" for reason, n in sorted(rejects.items())) or "none"
    joined = f"; {continuation:,} more lines inside quoted fields of multi-line records" if continuation else ""
    context.log.info(
        f"{lines:,} lines: {lines - rejected - continuation:,} kept, {rejected:,} rejected ({by_reason}){joined}"
    )


@single_run_asset(
    partitions_def=clickstream_days,
    deps=[clickstream_csv],
    # One run for a range of days: the log is scanned once, not once per day.
    backfill_policy=BackfillPolicy.single_run(),
    io_manager_key="parquet_io_manager",
    group_name=PREPARE_GROUP,
    kinds={"polars", "parquet"},
    description="Page views of one UTC day, cleaned and sorted by time: "
    + ", ".join(PUBLISHED_COLUMNS),
)
def clickstream_events(
    context: AssetExecutionContext, clickstream_log: ClickstreamLogFile
) -> Iterator[Output[dict[str, pl.LazyFrame]]]:
    log = clickstream_log.inspect()
    days = context.partition_keys
    with _staging_directory() as staging_dir:
        staged = clickstream_log.stage(DATASET_WINDOW, Path(staging_dir))
        staged.split_days(days)
        frames = {day: staged.day_events(day) for day in days}
        summaries = summarize_days(frames)
        for day in days:
            summary = summaries[day]
            rejects = count_by_reason(staged.rejects(day))
            context.add_asset_metadata(
                {
                    **numeric(
                        {
                            "rows": summary.rows,
                            "distinct_users": summary.distinct_users,
                            "distinct_products": summary.distinct_products,
                            "rejected_lines": sum(rejects.values()),
                        }
                    ),
                    "first_timestamp": epoch_text(summary.first_timestamp),
                    "last_timestamp": epoch_text(summary.last_timestamp),
                    "rejects_by_reason": counts_table(rejects, "reason"),
                    "preview": preview(frames[day].head(10).collect()),
                    "source": MetadataValue.path(str(log.path)),
                },
                partition_key=day,
            )
            context.log.info(f"{day}: {summary.rows} page views kept, {sum(rejects.values())} rejected")
        if set(days) == set(DATASET_WINDOW.days()):
            all_rejects = staged.rejects().collect()
            _log_counts(context, staged.lines, count_by_reason(all_rejects.lazy()), staged.continuation_lines)
            _share_rejects(_shared_rejects(log, clickstream_log), all_rejects, staged)
        # Yielded inside the ``with``: the IO manager writes the frames (which may read
        # the staging files lazily) before the generator resumes and the directory goes.
        # The log version goes into every day file, for the accounting check.
        yield Output(frames, metadata={LOG_VERSION: staged.version})


@single_run_asset(
    # After the events: when both run, it takes the rejects from the events' scan.
    deps=[clickstream_csv, clickstream_events],
    # Unpartitioned, but selectable with the events over a range of days in one run
    # (`dagster asset materialize --partition-range` needs every asset single-run).
    backfill_policy=BackfillPolicy.single_run(),
    io_manager_key="parquet_io_manager",
    group_name=PREPARE_GROUP,
    kinds={"polars", "parquet"},
    description="Every log line not kept in clickstream_events: line number, reason, raw line "
    "(the line's bytes as in the file, without its line ending).",
)
def clickstream_rejects(context: AssetExecutionContext, clickstream_log: ClickstreamLogFile) -> pl.DataFrame:
    log = clickstream_log.inspect()
    shared = _shared_rejects(log, clickstream_log)
    try:
        shared_metadata = pl.read_parquet_metadata(shared)
        lines, version = int(shared_metadata[_LINES_KEY]), shared_metadata[LOG_VERSION]
        continuation = int(shared_metadata[CONTINUATION_LINES])
        rejects = pl.read_parquet(shared)
        shared.unlink(missing_ok=True)
        context.log.info(f"rejects taken from this version of {log.path.name}'s scan by clickstream_events")
    except (FileNotFoundError, KeyError, OSError):
        with _staging_directory() as staging_dir:
            staged = clickstream_log.stage(DATASET_WINDOW, Path(staging_dir))
            rejects, lines, version = staged.rejects().collect(), staged.lines, staged.version
            continuation = staged.continuation_lines
    by_reason = count_by_reason(rejects.lazy())
    _log_counts(context, lines, by_reason, continuation)
    context.add_output_metadata(
        {
            **numeric(
                {
                    "data_lines": lines,
                    "kept_lines": lines - rejects.height - continuation,
                    "rejected_lines": rejects.height,
                    **{f"rejected_{k}": v for k, v in by_reason.items()},
                }
            ),
            "rejects_by_reason": counts_table(by_reason, "reason"),
            "preview": preview(
                rejects.head(10).with_columns(pl.col("raw_line").map_elements(_printable, return_dtype=pl.String))
            ),
            "source": MetadataValue.path(str(log.path)),
            # Also written into the file, for the accounting check.
            LOG_VERSION: version,
            CONTINUATION_LINES: MetadataValue.int(continuation),
        }
    )
    return rejects


def _printable(raw: bytes) -> str:
    """A raw line as the UI can show it: undecodable bytes replaced, long lines cut."""
    text = raw.decode("utf-8", errors="replace")
    return text if len(text) <= 200 else text[:200] + f"... ({len(raw):,} bytes)"


@asset_check(
    asset=clickstream_rejects,
    additional_ins={"events": AssetIn("clickstream_events", metadata={"allow_missing_partitions": True})},
    description="Every data line of the log is either kept in a day partition or rejected.",
)
def every_line_accounted_for(
    clickstream_log: ClickstreamLogFile,
    parquet_io_manager: ResourceParam[DailyParquetIOManager],
    clickstream_rejects: pl.DataFrame,
    events: dict[str, pl.LazyFrame],
) -> AssetCheckResult:
    lines = count_data_lines(clickstream_log.path)
    kept = sum(frame.select(pl.len()).collect().item() for frame in events.values())
    missing_days = sorted(set(clickstream_days.get_partition_keys()) - set(events))
    rejected = clickstream_rejects.height
    # A prepare killed half-way, or days prepared one by one from a changing log, leave files
    # read from different versions of it: their counts cannot be compared with each other.
    files = parquet_io_manager.file_metadata("clickstream_events", sorted(events))
    files |= parquet_io_manager.file_metadata("clickstream_rejects")
    versions = {name: written.get(LOG_VERSION) for name, written in files.items()}
    mixed = mixed_versions(versions)
    # Lines after the first of multi-line records (quoted fields holding a line break).
    continuation = int(files.get("clickstream_rejects.parquet", {}).get(CONTINUATION_LINES, 0))
    problems = [f"{len(missing_days)} day(s) not prepared yet"] if missing_days else []
    problems += [mixed] if mixed else []
    return AssetCheckResult(
        passed=not problems and lines == kept + rejected + continuation,
        metadata={
            **numeric({"data_lines": lines, "kept_rows": kept, "rejected_lines": rejected}),
            "continuation_lines": continuation,
            "unaccounted_lines": lines - kept - rejected - continuation,
            "days_not_prepared": ", ".join(missing_days) or "none",
            "log_versions": ", ".join(sorted({v or "unknown" for v in versions.values()})) or "none",
        },
        description="; ".join(problems) or None,
    )


def mixed_versions(versions: dict[str, str | None]) -> str | None:
    """None when every file was read from one version of the log; else which files from which."""
    by_version: dict[str, list[str]] = {}
    for name, version in sorted(versions.items()):
        by_version.setdefault(version or "unknown", []).append(name)
    if len(by_version) < 2:
        return None
    # The biggest group first: the odd files out come last.
    ordered = sorted(by_version.items(), key=lambda group: -len(group[1]))
    groups = "; ".join(f"version {v}: {', '.join(files)}" for v, files in ordered)
    return f"files read from {len(by_version)} different versions of the log ({groups}): prepare every day again"


def _by_day(context, events) -> dict[str, pl.LazyFrame]:
    """The checked days: one partition loads as a frame, a single-run range as a dict."""
    frames = events if isinstance(events, dict) else {context.partition_key: events}
    return {day: frame.lazy() for day, frame in frames.items()}


def _day_check(context, events, count_violations, what: str) -> AssetCheckResult:
    """Run a per-day violation count over every day the step covers; pass if all are 0."""
    violations = {day: count_violations(day, frame) for day, frame in _by_day(context, events).items()}
    bad = {day: n for day, n in violations.items() if n}
    if not context.has_partition_key:
        # A single-run range yields one result for the step; record each day's too, so
        # every partition shows its own check status in the UI.
        key = context.check_specs[0].key
        for day, n in violations.items():
            context.op_execution_context.log_event(
                AssetCheckEvaluation(
                    asset_key=key.asset_key, check_name=key.name, passed=n == 0, metadata={what: n}, partition=day
                )
            )
    return AssetCheckResult(
        passed=not bad,
        metadata={what: sum(violations.values()), "days_checked": len(violations), "days_failing": ", ".join(bad) or "none"},
    )


def _day_bounds(day: str) -> tuple[int, int]:
    window = clickstream_days.time_window_for_partition_key(day)
    return int(window.start.timestamp()), int(window.end.timestamp())


# Inputs are unannotated: one day arrives as a frame, a single-run range as a dict of them.
@partitioned_asset_check(asset=clickstream_events, partitions_def=clickstream_days)
def no_null_user_id(context, clickstream_events) -> AssetCheckResult:
    def nulls(_day: str, frame: pl.LazyFrame) -> int:
        return frame.select(pl.col("userId").null_count()).collect().item()

    return _day_check(context, clickstream_events, nulls, "null_user_ids")


@partitioned_asset_check(asset=clickstream_events, partitions_def=clickstream_days)
def timestamps_inside_day(context, clickstream_events) -> AssetCheckResult:
    def outside(day: str, frame: pl.LazyFrame) -> int:
        start, end = _day_bounds(day)
        ts = pl.col("original_timestamp")
        return frame.filter((ts < start) | (ts >= end)).select(pl.len()).collect().item()

    return _day_check(context, clickstream_events, outside, "outside_day")


@partitioned_asset_check(asset=clickstream_events, partitions_def=clickstream_days)
def no_duplicate_page_views(context, clickstream_events) -> AssetCheckResult:
    def duplicates(_day: str, frame: pl.LazyFrame) -> int:
        counts = frame.select(rows=pl.len(), distinct=pl.struct(PUBLISHED_COLUMNS).n_unique()).collect()
        return counts["rows"].item() - counts["distinct"].item()

    return _day_check(context, clickstream_events, duplicates, "duplicates")


EVENTS_CHECKS = [no_null_user_id, timestamps_inside_day, no_duplicate_page_views]
