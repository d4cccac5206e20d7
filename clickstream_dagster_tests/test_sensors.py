"""clickstream_log_changed: a log the prepared days were not read from prepares all days again;
the same log, seen again or by a new sensor, does not."""

import json
import os

import pytest
from dagster import AssetKey, build_sensor_context, materialize

from clickstream_dagster.assets import prepare
from clickstream_dagster.generator import write_log
from clickstream_dagster.resources.log_file import ClickstreamLogFile
from clickstream_dagster.resources.parquet import DailyParquetIOManager
from clickstream_dagster.sensors import (
    clickstream_log_changed,
    file_version,
    log_observation,
    prepared_log_version,
)

ALL_DAYS = {
    "dagster/asset_partition_range_start": "2012-03-01",
    "dagster/asset_partition_range_end": "2012-03-15",
}


def evaluate(instance, path, cursor=None):
    context = build_sensor_context(
        instance=instance, cursor=cursor, resources={"clickstream_log": ClickstreamLogFile(path=str(path))}
    )
    return clickstream_log_changed(context)


def prepare_all_days(instance, path, storage):
    """What the prepare run does, on the real instance: every day and the rejects, one run."""
    result = materialize(
        [prepare.clickstream_csv, prepare.clickstream_events, prepare.clickstream_rejects],
        resources={
            "clickstream_log": ClickstreamLogFile(path=str(path)),
            "parquet_io_manager": DailyParquetIOManager(base_dir=str(storage)),
        },
        instance=instance,
        tags=ALL_DAYS,
    )
    assert result.success


@pytest.fixture(scope="module")
def generated_log(tmp_path_factory):
    path = tmp_path_factory.mktemp("log") / "clickstream.csv"
    write_log(path, rows=1500, seed=3)
    return path


def test_first_sight_and_each_change_request_one_prepare_run_over_all_days(tmp_path, dagster_instance):
    log = tmp_path / "clickstream.csv"
    log.write_text("a,b\n1,2\n")
    first = evaluate(dagster_instance, log)
    [request] = first.run_requests
    assert request.tags["dagster/asset_partition_range_start"] == "2012-03-01"
    assert request.tags["dagster/asset_partition_range_end"] == "2012-03-15"
    [observation] = first.asset_events
    assert observation.asset_key.to_user_string() == "clickstream_csv"
    assert observation.data_version == json.loads(first.cursor)["sha256"]

    unchanged = evaluate(dagster_instance, log, first.cursor)
    assert not unchanged.run_requests

    log.write_text("a,b\n1,3\n")
    changed = evaluate(dagster_instance, log, unchanged.cursor)
    [again] = changed.run_requests
    assert again.run_key != request.run_key


def test_a_touched_but_identical_file_is_not_prepared_again(tmp_path, dagster_instance):
    log = tmp_path / "clickstream.csv"
    log.write_text("a,b\n1,2\n")
    first = evaluate(dagster_instance, log)
    os.utime(log, ns=(1, 1))
    assert not evaluate(dagster_instance, log, first.cursor).run_requests


def test_a_missing_log_is_skipped_naming_the_path(tmp_path, dagster_instance):
    result = evaluate(dagster_instance, tmp_path / "gone.csv")
    assert "gone.csv" in result.skip_message


def test_the_hash_is_reused_while_size_and_mtime_stay(tmp_path):
    log = tmp_path / "x"
    log.write_text("abc")
    version = file_version(log, None)
    assert file_version(log, version | {"sha256": "cached"})["sha256"] == "cached"
    assert json.loads(json.dumps(version)) == version


def test_a_new_sensor_on_data_prepared_from_the_same_log_prepares_nothing(
    generated_log, tmp_path, dagster_instance
):
    """`make demo` then `make dev`: the sensor has no cursor yet, but the days were read from this log."""
    version = file_version(generated_log, None)
    dagster_instance.report_runless_asset_event(log_observation(version))
    prepare_all_days(dagster_instance, generated_log, tmp_path)
    assert prepared_log_version(dagster_instance) == version["sha256"]

    first = evaluate(dagster_instance, generated_log)
    assert not first.run_requests
    reason = first.skip_reason.skip_message
    assert "already prepared" in reason and version["sha256"][:12] in reason
    assert json.loads(first.cursor)["sha256"] == version["sha256"]


def test_a_log_that_differs_from_what_was_prepared_is_prepared_again(
    generated_log, tmp_path, dagster_instance
):
    dagster_instance.report_runless_asset_event(log_observation(file_version(generated_log, None)))
    prepare_all_days(dagster_instance, generated_log, tmp_path)
    changed = tmp_path / "changed.csv"
    changed.write_bytes(generated_log.read_bytes() + b"\n")
    [request] = evaluate(dagster_instance, changed).run_requests
    assert request.run_key.startswith(file_version(changed, None)["sha256"])


def test_days_prepared_without_a_known_log_version_are_prepared_again(
    generated_log, tmp_path, dagster_instance
):
    prepare_all_days(dagster_instance, generated_log, tmp_path)  # no observation: version unknown
    assert prepared_log_version(dagster_instance) != file_version(generated_log, None)["sha256"]
    assert evaluate(dagster_instance, generated_log).run_requests


def test_one_day_missing_means_not_prepared(generated_log, tmp_path, dagster_instance):
    version = file_version(generated_log, None)
    dagster_instance.report_runless_asset_event(log_observation(version))
    result = materialize(
        [prepare.clickstream_csv, prepare.clickstream_events],
        resources={
            "clickstream_log": ClickstreamLogFile(path=str(generated_log)),
            "parquet_io_manager": DailyParquetIOManager(base_dir=str(tmp_path)),
        },
        instance=dagster_instance,
        partition_key="2012-03-04",
    )
    assert result.success
    assert dagster_instance.get_latest_materialization_event(AssetKey("clickstream_events")) is not None
    assert prepared_log_version(dagster_instance) is None
    assert evaluate(dagster_instance, generated_log).run_requests


def stale_status(instance, key: str, partition: str | None = None):
    """What the UI's badge shows (``assetNodes { staleStatus }``), from the same resolver."""
    from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
    from dagster._core.definitions.data_version import CachingStaleStatusResolver
    from dagster._time import get_current_datetime

    from clickstream_dagster.definitions import defs

    graph = defs.resolve_asset_graph()
    view = AssetGraphView(
        temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
        instance=instance,
        asset_graph=graph,
    )
    resolver = CachingStaleStatusResolver(instance, graph, view)
    return resolver.get_status(AssetKey(key), partition), resolver.get_stale_causes(AssetKey(key), partition)


def test_unsynced_only_after_the_log_really_changed(tmp_path, dagster_instance):
    from dagster._core.definitions.data_version import StaleStatus

    log = tmp_path / "clickstream.csv"
    write_log(log, rows=300, seed=9)
    first = evaluate(dagster_instance, log)  # the sensor: observes the log, asks for a prepare
    for event in first.asset_events:
        dagster_instance.report_runless_asset_event(event)
    prepare_all_days(dagster_instance, log, tmp_path / "storage")
    for key, day in (("clickstream_rejects", None), ("clickstream_events", "2012-03-02")):
        assert stale_status(dagster_instance, key, day) == (StaleStatus.FRESH, [])

    # Touched, same content: the sensor records nothing new, nothing is out of date.
    os.utime(log, ns=(1, 1))
    assert not evaluate(dagster_instance, log, first.cursor).asset_events
    assert stale_status(dagster_instance, "clickstream_rejects")[0] == StaleStatus.FRESH

    log.write_bytes(log.read_bytes() + b"1331000000,junk\n")
    changed = evaluate(dagster_instance, log, first.cursor)
    for event in changed.asset_events:
        dagster_instance.report_runless_asset_event(event)
    for key, day in (("clickstream_rejects", None), ("clickstream_events", "2012-03-02")):
        status, causes = stale_status(dagster_instance, key, day)
        assert status == StaleStatus.STALE
        assert [c.dependency.asset_key.to_user_string() for c in causes] == ["clickstream_csv"]


def test_observing_the_log_in_the_ui_records_its_sha256(generated_log, dagster_instance):
    # What the UI's "Observe sources" runs (dagster.observe is not exported in 1.13).
    from dagster._core.definitions.observe import observe

    result = observe(
        [prepare.clickstream_csv],
        resources={"clickstream_log": ClickstreamLogFile(path=str(generated_log))},
        instance=dagster_instance,
    )
    [observation] = result.asset_observations_for_node("clickstream_csv")
    assert observation.data_version == file_version(generated_log)["sha256"]
