"""The prepare assets on a real temporary Dagster instance: Parquet contents, metadata, checks."""

import logging
import os
from pathlib import Path

import polars as pl
import pytest
from dagster import AssetCheckKey, AssetKey, AssetSelection, DagsterInstance, build_output_context, build_resources, materialize

from clickstream_dagster.assets import prepare
from clickstream_dagster.cleaning import PUBLISHED_COLUMNS, inspect_log, log_version
from clickstream_dagster.generator import write_log
from clickstream_dagster.resources.log_file import ClickstreamLogFile
from clickstream_dagster.resources.parquet import DailyParquetIOManager

PREPARE = [
    prepare.clickstream_events,
    prepare.clickstream_rejects,
    prepare.every_line_accounted_for,
    *prepare.EVENTS_CHECKS,
]
ALL_DAYS = {"dagster/asset_partition_range_start": "2012-03-01", "dagster/asset_partition_range_end": "2012-03-15"}


@pytest.fixture(scope="module")
def log(tmp_path_factory):
    path = tmp_path_factory.mktemp("log") / "clickstream.csv"
    return path, write_log(path, rows=4000, seed=7)


def resources(log_path: Path, storage: Path) -> dict:
    return {
        "clickstream_log": ClickstreamLogFile(path=str(log_path)),
        "parquet_io_manager": DailyParquetIOManager(base_dir=str(storage)),
    }


def checks(result) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def test_one_day_is_prepared_sorted_with_its_metadata(log, tmp_path, dagster_instance):
    path, summary = log
    result = materialize(PREPARE[:1] + PREPARE[3:], resources=resources(path, tmp_path), instance=dagster_instance, partition_key="2012-03-02")
    assert result.success
    day = pl.read_parquet(tmp_path / "clickstream_events" / "2012-03-02.parquet")
    assert day.columns == list(PUBLISHED_COLUMNS)
    assert day.height == summary.rows_per_day["2012-03-02"]
    assert day["original_timestamp"].is_sorted()
    [mat] = result.asset_materializations_for_node("clickstream_events")
    assert mat.partition == "2012-03-02"
    assert mat.metadata["rows"].value == day.height
    assert mat.metadata["distinct_users"].value == day["userId"].n_unique()
    assert mat.metadata["first_timestamp"].value.startswith("2012-03-02")
    assert len(mat.metadata["preview"].value.records) == 10
    assert checks(result) == {"no_null_user_id": True, "timestamps_inside_day": True, "no_duplicate_page_views": True}
    assert sorted(p.name for p in (tmp_path / "clickstream_events").iterdir()) == ["2012-03-02.parquet"]


def test_all_days_in_one_run_account_for_every_line(log, tmp_path, dagster_instance):
    path, summary = log
    result = materialize(PREPARE, resources=resources(path, tmp_path), instance=dagster_instance, tags=ALL_DAYS)
    assert result.success
    mats = result.asset_materializations_for_node("clickstream_events")
    assert sorted(m.partition for m in mats) == sorted(summary.rows_per_day)
    # Per-day metadata, not the range's: each partition reports its own row count.
    assert {m.partition: m.metadata["rows"].value for m in mats} == summary.rows_per_day
    kept = sum(pl.read_parquet(f).height for f in (tmp_path / "clickstream_events").glob("*.parquet"))
    rejects = pl.read_parquet(tmp_path / "clickstream_rejects.parquet")
    assert kept == summary.kept_rows_expected
    # Every file carries the version of the log it was read from, and the materializations show it.
    versions = {pl.read_parquet_metadata(f).get("log_version") for f in tmp_path.rglob("*.parquet")}
    assert versions == {log_version(inspect_log(path))}
    assert {m.metadata["log_version"].value for m in mats} == versions
    assert kept + rejects.height == summary.rows
    by_reason = dict(rejects.group_by("reason").len().iter_rows())
    assert by_reason == {k: v for k, v in summary.reject_reasons.items() if v}
    assert checks(result) == {
        "every_line_accounted_for": True,
        "no_null_user_id": True,
        "timestamps_inside_day": True,
        "no_duplicate_page_views": True,
    }
    # Each day shows its own check status, although the range ran as one step.
    for name in ("no_null_user_id", "timestamps_inside_day", "no_duplicate_page_views"):
        key = AssetCheckKey(AssetKey("clickstream_events"), name)
        statuses = {i.partition_key: i.latest_execution_status.value for i in dagster_instance.event_log_storage.get_asset_check_partition_info([key])}
        assert {day: statuses.get(day) for day in summary.rows_per_day} == dict.fromkeys(summary.rows_per_day, "SUCCEEDED")
    # The events were scanned from the log once: one step, one staging pass.
    assert len([e for e in result.all_events if e.event_type_value == "STEP_START" and e.step_key == "clickstream_events"]) == 1


def test_accounting_check_fails_when_days_are_missing(log, tmp_path, dagster_instance):
    path, _ = log
    materialize(PREPARE[:1], resources=resources(path, tmp_path), instance=dagster_instance, partition_key="2012-03-01")
    result = materialize(
        [prepare.clickstream_events, prepare.clickstream_rejects, prepare.every_line_accounted_for],
        selection=[prepare.clickstream_rejects],
        resources=resources(path, tmp_path),
        instance=dagster_instance,
    )
    [evaluation] = result.get_asset_check_evaluations()
    assert not evaluation.passed
    assert evaluation.metadata["days_not_prepared"].value.startswith("2012-03-02")


def test_accounting_check_fails_naming_files_read_from_different_versions_of_the_log(tmp_path, dagster_instance):
    log_path = tmp_path / "clickstream.csv"
    write_log(log_path, rows=400, seed=21)
    storage = tmp_path / "storage"
    assert materialize(PREPARE[:2], resources=resources(log_path, storage), instance=dagster_instance, tags=ALL_DAYS).success
    write_log(log_path, rows=500, seed=22)  # the log changes; one day is prepared again
    assert materialize(PREPARE[:1], resources=resources(log_path, storage), instance=dagster_instance, partition_key="2012-03-02").success
    result = materialize(
        PREPARE[:3], selection=AssetSelection.checks(prepare.every_line_accounted_for), resources=resources(log_path, storage),
        instance=dagster_instance,
    )  # fmt: skip
    [evaluation] = result.get_asset_check_evaluations()
    assert not evaluation.passed
    new, old = log_version(inspect_log(log_path)), pl.read_parquet_metadata(storage / "clickstream_rejects.parquet")["log_version"]
    assert new != old
    assert evaluation.description.startswith(
        f"files read from 2 different versions of the log (version {old}: clickstream_events/2012-03-01.parquet, "
        "clickstream_events/2012-03-03.parquet, "
    )
    assert evaluation.description.endswith(
        f"clickstream_events/2012-03-15.parquet, clickstream_rejects.parquet; "
        f"version {new}: clickstream_events/2012-03-02.parquet): prepare every day again"
    )


def test_a_missing_log_fails_once_naming_the_file(tmp_path, dagster_instance: DagsterInstance):
    missing = tmp_path / "nowhere" / "clickstream.csv"
    result = materialize(
        PREPARE[:1], resources=resources(missing, tmp_path), instance=dagster_instance,
        partition_key="2012-03-01", raise_on_error=False,
    )
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert str(missing) in failure.event_specific_data.error.message
    assert not list(tmp_path.glob("clickstream_events/*"))


def test_a_tab_separated_log_prepares_the_same_rows(tmp_path, dagster_instance):
    tsv = tmp_path / "omniture-logs.tsv"
    summary = write_log(tsv, rows=1500, seed=3, separator="\t")
    result = materialize(PREPARE[:2], resources=resources(tsv, tmp_path), instance=dagster_instance, tags=ALL_DAYS)
    assert result.success
    kept = sum(pl.read_parquet(f).height for f in (tmp_path / "clickstream_events").glob("*.parquet"))
    assert kept == summary.kept_rows_expected


def test_both_assets_in_one_run_scan_the_log_once(log, tmp_path, dagster_instance, monkeypatch):
    from clickstream_dagster.resources import log_file

    scans = []
    real_stage = log_file.stage_log
    monkeypatch.setattr(log_file, "stage_log", lambda *a, **k: scans.append(1) or real_stage(*a, **k))
    path, summary = log
    result = materialize(PREPARE[:2], resources=resources(path, tmp_path), instance=dagster_instance, tags=ALL_DAYS)
    assert result.success and len(scans) == 1
    [mat] = result.asset_materializations_for_node("clickstream_rejects")
    assert mat.metadata["kept_lines"].value == summary.kept_rows_expected
    # Kept and rejected counts by reason are logged at info level.
    messages = [e.user_message for e in dagster_instance.all_logs(result.run_id) if e.level == logging.INFO]
    assert any(f"{summary.kept_rows_expected:,} kept" in m and "duplicate" in m for m in messages)
    # Alone, the rejects asset scans the log itself.
    assert materialize(PREPARE[:2], selection=[prepare.clickstream_rejects], resources=resources(path, tmp_path), instance=dagster_instance).success
    assert len(scans) == 2


def test_a_failed_write_leaves_the_previous_day_file_and_no_temporary(log, tmp_path, dagster_instance):
    path, _ = log
    assert materialize(PREPARE[:1], resources=resources(path, tmp_path), instance=dagster_instance, partition_key="2012-03-03").success
    day_file = tmp_path / "clickstream_events" / "2012-03-03.parquet"
    before = pl.read_parquet(day_file)
    failing = pl.LazyFrame({"original_timestamp": ["12", "x"]}).select(pl.col("original_timestamp").cast(pl.Int64))
    context = build_output_context(asset_key=AssetKey("clickstream_events"), partition_key="2012-03-03", resources={})
    with build_resources({"io": DailyParquetIOManager(base_dir=str(tmp_path))}) as built:
        with pytest.raises(pl.exceptions.PolarsError):
            built.io.handle_output(context, {"2012-03-03": failing})
    assert pl.read_parquet(day_file).equals(before)
    assert sorted(p.name for p in day_file.parent.iterdir()) == ["2012-03-03.parquet"]


def test_replaying_a_day_not_prepared_fails_once_naming_the_day_storage_and_command(log, tmp_path, dagster_instance):
    from clickstream_dagster.assets import replay
    from clickstream_dagster.resources.kafka import KafkaResource
    from clickstream_dagster.resources.schema_registry import SchemaRegistryResource

    path, _ = log
    result = materialize(
        [prepare.clickstream_events, replay.click_data],
        selection=[replay.click_data],
        resources={
            **resources(path, tmp_path),
            "kafka": KafkaResource(bootstrap_servers="127.0.0.1:1"),
            "schema_registry": SchemaRegistryResource(),
        },
        instance=dagster_instance,
        partition_key="2012-03-05",
        raise_on_error=False,
    )
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.event_specific_data.error.message
    assert "clickstream_events for 2012-03-05 is not prepared" in message
    assert str(tmp_path) in message
    assert "dagster asset materialize -m clickstream_dagster.definitions --select clickstream_events" in message
    assert "--partition-range 2012-03-05...2012-03-05" in message
    # Not retried: the day will not appear by itself.
    assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]


def test_a_prepare_removes_what_killed_prepares_left_and_nothing_of_live_ones(log, tmp_path, dagster_instance):
    import socket
    import subprocess
    import tempfile

    child = subprocess.Popen(["true"])
    child.wait()  # a writer that is gone, as after a kill -9
    host, dead = socket.gethostname(), child.pid
    events_dir = tmp_path / "clickstream_events"
    events_dir.mkdir()
    left = [
        events_dir / f".2012-03-09.parquet.{dead}.1a2b3c4d.tmp",  # a day this run does not write
        events_dir / f".writing.{dead}@{host}.5e6f7a8b.tmp",
        tmp_path / f".clickstream_rejects.parquet.{dead}@{host}.9c0d1e2f.tmp",
        Path(tempfile.gettempdir()) / f"clickstream-staging.{dead}@{host}.x1y2z3w4.tmp",
    ]
    for path in left:
        path.write_bytes(b"half written") if path.name.startswith(".2012") else path.mkdir()
    live = events_dir / f".writing.{os.getpid()}@{host}.0a0b0c0d.tmp"
    live.mkdir()
    path, _ = log
    result = materialize(PREPARE[:2], resources=resources(path, tmp_path), instance=dagster_instance, partition_key="2012-03-02")
    assert result.success
    assert [p for p in left if p.exists()] == []
    assert live.exists()
    assert sorted(p.name for p in events_dir.iterdir()) == sorted(["2012-03-02.parquet", live.name])


def test_a_quoted_line_break_is_one_kept_row_and_every_line_is_still_accounted_for(tmp_path, dagster_instance):
    log_path = tmp_path / "clickstream.csv"
    summary = write_log(log_path, rows=300, seed=8)
    first = log_path.read_bytes().splitlines()[1]  # a kept row; its user agent is quoted
    timestamp, rest = first.split(b",", 1)
    multi = str(int(timestamp) + 1).encode() + b"," + rest.rsplit(b',"', 1)[0] + b',"Agent\nwith a second line"\n'
    log_path.write_bytes(log_path.read_bytes() + multi)
    storage = tmp_path / "storage"
    result = materialize(PREPARE[:3], resources=resources(log_path, storage), instance=dagster_instance, tags=ALL_DAYS)
    assert result.success
    [evaluation] = result.get_asset_check_evaluations()
    assert evaluation.passed, evaluation.metadata
    assert evaluation.metadata["continuation_lines"].value == 1
    kept = pl.concat([pl.read_parquet(f) for f in (storage / "clickstream_events").glob("*.parquet")])
    assert kept.height == summary.kept_rows_expected + 1
    assert kept.filter(pl.col("userAgent") == "Agent\nwith a second line").height == 1
    [mat] = result.asset_materializations_for_node("clickstream_rejects")
    assert mat.metadata["kept_lines"].value == kept.height


def test_prepares_of_other_logs_keep_their_shared_rejects(tmp_path, monkeypatch):
    """The events step hands the rejects to the rejects step through a machine-wide directory:
    a prepare of another log (another code location, a parallel test) must not delete them,
    while a new version of the same log replaces the old one's file."""
    monkeypatch.setattr(prepare, "SHARED_REJECTS_DIR", tmp_path / "shared")
    first, other = tmp_path / "a" / "clickstream.csv", tmp_path / "b" / "clickstream.csv"
    for path, seed in ((first, 1), (other, 2)):
        path.parent.mkdir()
        write_log(path, rows=50, seed=seed)
    settings = ClickstreamLogFile(path=str(first))
    staged = type("Staged", (), {"lines": 50, "version": "v", "continuation_lines": 0})
    rejects = pl.DataFrame({"line": [1]})

    def share(path: Path) -> Path:
        shared = prepare._shared_rejects(inspect_log(path), settings)
        prepare._share_rejects(shared, rejects, staged)
        return shared

    first_v1, other_v1 = share(first), share(other)
    assert first_v1.exists() and other_v1.exists()
    with first.open("a") as f:
        f.write("\n")  # a new version of the first log
    first_v2 = share(first)
    assert first_v2 != first_v1 and first_v2.exists()
    assert not first_v1.exists() and other_v1.exists()
