"""The definitions load, and nothing is renamed or dropped without this file changing too."""

from dagster import AssetKey

from clickstream_dagster.definitions import defs
from clickstream_dagster.partitions import clickstream_days


def test_definitions_load_and_every_job_resolves():
    defs.resolve_all_job_defs()
    assert {job.name for job in defs.resolve_all_job_defs()} >= {"prepare_clickstream", "replay_clickstream"}


def test_asset_keys_snapshot():
    assert sorted(key.to_user_string() for key in defs.resolve_all_asset_keys()) == [
        "click_data",
        "clickstream_csv",
        "clickstream_events",
        "clickstream_rejects",
    ]


def test_asset_checks_snapshot():
    checks = {(k.asset_key.to_user_string(), k.name) for k in defs.resolve_asset_graph().asset_check_keys}
    assert checks == {
        ("click_data", "delivered_exactly_once"),
        ("clickstream_events", "no_null_user_id"),
        ("clickstream_events", "timestamps_inside_day"),
        ("clickstream_events", "no_duplicate_page_views"),
        ("clickstream_rejects", "every_line_accounted_for"),
    }


def test_fifteen_daily_partitions():
    keys = clickstream_days.get_partition_keys()
    assert len(keys) == 15 and keys[0] == "2012-03-01" and keys[-1] == "2012-03-15"


def test_replay_reads_the_prepared_days():
    graph = defs.resolve_asset_graph()
    assert graph.get(AssetKey("click_data")).parent_keys == {AssetKey("clickstream_events")}


def test_automation_snapshot_and_what_runs_by_default():
    from dagster import DefaultScheduleStatus, DefaultSensorStatus

    sensors = {s.name: s.default_status for s in defs.sensors}
    assert sensors == {
        "clickstream_log_changed": DefaultSensorStatus.RUNNING,
        "replay_feed": DefaultSensorStatus.STOPPED,
        "replay_watchdog": DefaultSensorStatus.RUNNING,
    }
    assert {s.name: s.default_status for s in defs.schedules} == {"replay_cycle": DefaultScheduleStatus.STOPPED}
