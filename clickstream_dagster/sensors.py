"""Prepare again, without anyone asking, when the clickstream log file changes."""

import hashlib
import json
from pathlib import Path

from dagster import (
    AssetObservation,
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from clickstream_dagster.jobs import prepare_clickstream
from clickstream_dagster.partitions import clickstream_days
from clickstream_dagster.resources.log_file import ClickstreamLogFile

CLICKSTREAM_CSV_KEY = "clickstream_csv"


def file_version(path: Path, previous: dict | None) -> dict:
    """Size, mtime and sha256 of the file; the hash is only recomputed when size or mtime move."""
    stat = path.stat()
    version = {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if previous and all(previous.get(k) == version[k] for k in version):
        return previous
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return version | {"sha256": digest.hexdigest()}


@sensor(
    name="clickstream_log_changed",
    job=prepare_clickstream,
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,
    description="When the log's content changes, prepare all days again in one run.",
)
def clickstream_log_changed(context: SensorEvaluationContext, clickstream_log: ClickstreamLogFile):
    path = Path(clickstream_log.path)
    if not path.is_file():
        return SkipReason(f"clickstream log {path} not found (CLICKSTREAM_CSV)")
    previous = json.loads(context.cursor) if context.cursor else None
    current = file_version(path, previous)
    if previous and previous.get("sha256") == current["sha256"]:
        return SensorResult(skip_reason=SkipReason(f"{path.name} unchanged"), cursor=json.dumps(current))
    keys = clickstream_days.get_partition_keys()
    return SensorResult(
        run_requests=[
            RunRequest(
                run_key=current["sha256"],
                tags={
                    # One run over all days: the log is scanned once.
                    "dagster/asset_partition_range_start": keys[0],
                    "dagster/asset_partition_range_end": keys[-1],
                },
            )
        ],
        asset_events=[
            AssetObservation(
                asset_key=CLICKSTREAM_CSV_KEY,
                metadata={"sha256": current["sha256"], "size_bytes": current["size"], "path": str(path)},
            )
        ],
        cursor=json.dumps(current),
    )
