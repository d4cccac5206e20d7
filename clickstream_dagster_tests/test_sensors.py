"""clickstream_log_changed: a new log content prepares all days again, an unchanged one does not."""

import json
import os

from dagster import build_sensor_context

from clickstream_dagster.resources.log_file import ClickstreamLogFile
from clickstream_dagster.sensors import clickstream_log_changed, file_version


def evaluate(path, cursor=None):
    context = build_sensor_context(cursor=cursor, resources={"clickstream_log": ClickstreamLogFile(path=str(path))})
    return clickstream_log_changed(context)


def test_first_sight_and_each_change_request_one_prepare_run_over_all_days(tmp_path):
    log = tmp_path / "clickstream.csv"
    log.write_text("a,b\n1,2\n")
    first = evaluate(log)
    [request] = first.run_requests
    assert request.tags["dagster/asset_partition_range_start"] == "2012-03-01"
    assert request.tags["dagster/asset_partition_range_end"] == "2012-03-15"
    assert first.asset_events[0].asset_key.to_user_string() == "clickstream_csv"

    unchanged = evaluate(log, first.cursor)
    assert not unchanged.run_requests

    log.write_text("a,b\n1,3\n")
    changed = evaluate(log, unchanged.cursor)
    [again] = changed.run_requests
    assert again.run_key != request.run_key


def test_a_touched_but_identical_file_is_not_prepared_again(tmp_path):
    log = tmp_path / "clickstream.csv"
    log.write_text("a,b\n1,2\n")
    first = evaluate(log)
    os.utime(log, ns=(1, 1))
    assert not evaluate(log, first.cursor).run_requests


def test_a_missing_log_is_skipped_naming_the_path(tmp_path):
    result = evaluate(tmp_path / "gone.csv")
    assert "gone.csv" in result.skip_message


def test_the_hash_is_reused_while_size_and_mtime_stay(tmp_path):
    log = tmp_path / "x"
    log.write_text("abc")
    version = file_version(log, None)
    assert file_version(log, version | {"sha256": "cached"})["sha256"] == "cached"
    assert json.loads(json.dumps(version)) == version
