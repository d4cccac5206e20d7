"""Operate the project as a person does in the UI: the real webserver and daemon, over GraphQL.

One ``dagster dev`` serves the whole module (see conftest.py). The sensor prepares the 15 days
on its first evaluation; the replay tests launch, backfill, terminate and schedule replays of
those days into unique topics of the test broker and check what arrived there.
"""

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pytest

from clickstream_dagster_tests.e2e.conftest import (
    DAY_TAG,
    DAYS,
    IN_PROGRESS,
    PACING_TAG,
    REPLAY_JOB,
    RUN_TIMEOUT_S,
    SENSOR_NAME,
    TERMINAL,
    TOPIC_TAG,
    read_topic,
    run_tags,
    topic_size,
    wait_for,
)

pytestmark = pytest.mark.e2e

EVENTS_CHECKS = {"no_null_user_id", "timestamps_inside_day", "no_duplicate_page_views"}
CYCLE_ANCHOR = datetime(2012, 3, 1, tzinfo=timezone.utc)
HOUR = timedelta(hours=1)


def day_bounds(day: str) -> tuple[int, int]:
    start = datetime.fromisoformat(day).replace(tzinfo=timezone.utc)
    return int(start.timestamp()), int((start + timedelta(days=1)).timestamp())


def replay_config(topic: str, **overrides) -> dict:
    return {"topic": topic, **overrides}


def click_data_materializations(gql, run_id: str) -> list[dict]:
    return [m for m in gql.materializations(run_id) if m["asset"] == "click_data"]


def check_records(records, run_id: str, day: str) -> None:
    """Every record was sent by ``run_id`` from ``day``: headers, key and body agree."""
    start, end = day_bounds(day)
    for record in records:
        headers = dict(record.headers)
        assert headers.get("dagster_run_id") == run_id.encode(), headers
        assert headers.get("source_day") == day.encode(), headers
        body = json.loads(record.value)
        assert record.key == body["userId"].encode()
        assert start <= body["original_timestamp"] < end, body


# --------------------------------------------------------------------------- prepare


def test_sensor_prepares_all_15_days(dagster_dev, gql, prepared_run):
    """The RUNNING sensor saw the log on its first tick and prepared every day in one run."""
    run_id = prepared_run["runId"]
    assert prepared_run["status"] == "SUCCESS", gql.describe_run(run_id)
    tags = run_tags(prepared_run)
    assert tags["dagster/sensor_name"] == SENSOR_NAME
    assert (tags["dagster/asset_partition_range_start"], tags["dagster/asset_partition_range_end"]) == (
        DAYS[0],
        DAYS[-1],
    )
    # Exactly one prepare run: one scan of the log for all days.
    assert [r["runId"] for r in gql.runs(job_name="prepare_clickstream")] == [run_id]

    materializations = gql.materializations(run_id)
    events = {m["partition"]: m["metadata"] for m in materializations if m["asset"] == "clickstream_events"}
    assert sorted(events) == DAYS
    [rejects] = [m["metadata"] for m in materializations if m["asset"] == "clickstream_rejects"]

    # What the generator says it wrote is what the run reports it kept and rejected.
    summary = dagster_dev.log_summary
    assert sum(meta["rows"] for meta in events.values()) == summary["kept_rows_expected"]
    assert rejects["rejected_lines"] == sum(summary["reject_reasons"].values())

    # The Parquet files are where CLICKSTREAM_STORAGE_DIR says, one per day, with those rows.
    for day, meta in events.items():
        path = Path(dagster_dev.storage_dir) / "clickstream_events" / f"{day}.parquet"
        assert path.is_file(), f"{path} missing"
        assert pl.scan_parquet(path).select(pl.len()).collect().item() == meta["rows"], day

    # Every check ran and passed.
    evaluations = [e["evaluation"] for e in gql.events(run_id) if e["__typename"] == "AssetCheckEvaluationEvent"]
    assert {e["checkName"] for e in evaluations} == EVENTS_CHECKS | {"every_line_accounted_for"}
    assert all(e["success"] for e in evaluations), [(e["checkName"], e["metadataEntries"]) for e in evaluations]
    # Each day shows its own result for each per-day check (the range ran as one step).
    for check in EVENTS_CHECKS:
        days_checked = {e["partition"] for e in evaluations if e["checkName"] == check and e["partition"]}
        assert days_checked == set(DAYS), (check, sorted(days_checked))

    # And the UI shows the asset as fully materialized.
    stats = gql.partition_stats("clickstream_events")
    assert (stats["numMaterialized"], stats["numPartitions"], stats["numFailed"]) == (15, 15, 0)


# --------------------------------------------------------------------------- replay


def test_replay_one_day_from_the_launchpad(gql, prepared_days, replay_topic, kafka_bootstrap_servers, idle_replays):
    day, limit = "2012-03-03", 150
    run_id = gql.submit_replay(day, replay_config(replay_topic, pacing="fixed", interval_ms=5, limit=limit))
    run = gql.wait_for_run(run_id)
    assert run["status"] == "SUCCESS", gql.describe_run(run_id)

    tags = run_tags(run)
    assert tags["dagster/partition"] == day
    assert (tags.get(TOPIC_TAG), tags.get(PACING_TAG), tags.get(DAY_TAG)) == (replay_topic, "fixed", day)

    [materialization] = click_data_materializations(gql, run_id)
    assert materialization["partition"] == day
    meta = materialization["metadata"]
    expected = min(limit, prepared_days[day])

    # The asset's page (its materialization history) shows the same figures for that day.
    [latest] = [m for m in gql.asset_materializations("click_data") if m["runId"] == run_id]
    assert (latest["partition"], latest["metadata"]["messages"]) == (day, meta["messages"])

    records = read_topic(kafka_bootstrap_servers, replay_topic)
    assert len(records) == meta["messages"] == expected
    assert meta["topic"] == replay_topic
    # Each partition's span covers its records; transaction markers take offsets in between too.
    spans = {s["partition"]: (s["first_offset"], s["last_offset"]) for s in meta["kafka_offsets"]}
    assert {r.partition for r in records} == set(spans)
    assert all(spans[r.partition][0] <= r.offset <= spans[r.partition][1] for r in records)
    check_records(records, run_id, day)
    # Sent in the day's order: the original timestamps never go back within a Kafka partition.
    by_partition: dict[int, list] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        by_partition.setdefault(record.partition, []).append(json.loads(record.value)["original_timestamp"])
    assert all(ts == sorted(ts) for ts in by_partition.values())


def test_backfill_of_two_days_runs_them_in_order_one_at_a_time(
    gql, prepared_days, replay_topic, kafka_bootstrap_servers, idle_replays
):
    days, limit = ["2012-03-05", "2012-03-06"], 60
    config = replay_config(replay_topic, pacing="fixed", interval_ms=5, limit=limit)
    backfill_id = gql.launch_job_backfill(
        REPLAY_JOB, days, run_config={"ops": {"click_data": {"config": config}}}, tags={TOPIC_TAG: replay_topic}
    )
    assert sorted(gql.backfill(backfill_id)["partitionNames"]) == days

    def finished_runs():
        runs = gql.runs(job_name=REPLAY_JOB, tags={"dagster/backfill": backfill_id})
        return len(runs) == len(days) and all(r["status"] in TERMINAL for r in runs) and runs

    runs = wait_for(
        finished_runs,
        timeout_s=2 * RUN_TIMEOUT_S,
        what=f"the {len(days)} runs of backfill {backfill_id} to finish",
        interval_s=1.0,
        details=lambda: json.dumps(gql.backfill(backfill_id), indent=1) + "\n" + gql.details(),
    )
    by_day = {run_tags(r)["dagster/partition"]: r for r in runs}
    assert sorted(by_day) == days
    for run in by_day.values():
        assert run["status"] == "SUCCESS", gql.describe_run(run["runId"])
        assert run_tags(run)[TOPIC_TAG] == replay_topic

    first, second = by_day[days[0]], by_day[days[1]]
    # Chronological, and never overlapping: the topic's tag limit queues the second run.
    assert first["startTime"] < second["startTime"], (first, second)
    assert first["endTime"] <= second["startTime"], (first, second)

    sent = {}
    for day, run in by_day.items():
        [materialization] = click_data_materializations(gql, run["runId"])
        assert materialization["partition"] == day
        sent[day] = materialization["metadata"]["messages"]
        assert sent[day] == min(limit, prepared_days[day])
    records = read_topic(kafka_bootstrap_servers, replay_topic)
    assert len(records) == sum(sent.values())
    for day, run in by_day.items():
        check_records([r for r in records if dict(r.headers)["source_day"] == day.encode()], run["runId"], day)
    # In every Kafka partition, all of the first day comes before any of the second.
    for partition in {r.partition for r in records}:
        sequence = [dict(r.headers)["source_day"].decode() for r in sorted(records, key=lambda r: r.offset)
                    if r.partition == partition]
        assert sequence == sorted(sequence), f"days interleaved in partition {partition}: {sequence}"


def test_terminate_a_long_replay(gql, prepared_days, replay_topic, kafka_bootstrap_servers, idle_replays):
    day = "2012-03-08"
    total = prepared_days[day]
    # One message every 500 ms: the whole day would take total/2 s, far longer than the test waits.
    run_id = gql.submit_replay(day, replay_config(replay_topic, pacing="fixed", interval_ms=500))

    def sending() -> bool:
        status = gql.run(run_id)["status"]
        if status in TERMINAL:
            raise AssertionError(f"the replay ended before it could be terminated:\n{gql.describe_run(run_id)}")
        return status == "STARTED" and topic_size(kafka_bootstrap_servers, replay_topic) >= 3

    wait_for(sending, timeout_s=RUN_TIMEOUT_S, what="the replay to send a few messages",
             details=lambda: gql.describe_run(run_id))

    result = gql.terminate(run_id)
    assert result["__typename"] == "TerminateRunSuccess", result
    run = gql.wait_for_run(run_id, timeout_s=90)
    assert run["status"] == "CANCELED", gql.describe_run(run_id)

    events = gql.events(run_id)
    stopped = [
        e["message"] for e in events
        if e["__typename"] == "LogMessageEvent" and e["level"] == "WARNING" and "stopped" in e["message"]
    ]
    assert len(stopped) == 1, [e.get("message") for e in events]
    progress = re.search(r"(\d+)/(\d+) delivered .*?, (\d+) sent and (\d+) acked", stopped[0])
    assert progress and day in stopped[0], stopped[0]
    delivered, planned, sent, acked = map(int, progress.groups())
    assert planned == total

    [observation] = [o for o in gql.observations(run_id) if o["asset"] == "click_data"]
    assert observation["partition"] == day
    messages = observation["metadata"]["messages"]
    # Delivered means committed: an aborted tail may have been acked, never counted.
    assert 0 < messages == delivered <= acked <= sent < total
    assert not click_data_materializations(gql, run_id), "a cancelled replay must not count as materialized"

    # A read_committed consumer sees exactly what the run says it delivered, all from this run.
    records = read_topic(kafka_bootstrap_servers, replay_topic)
    assert len(records) == messages
    check_records(records, run_id, day)


# --------------------------------------------------------------------------- schedule


def expected_cycle_day(tick: datetime) -> str:
    """The documented round robin: tick 0 is 2012-03-01 00:00 UTC, one day per hourly tick."""
    return DAYS[int((tick - CYCLE_ANCHOR) // HOUR) % len(DAYS)]


def next_hour(now: datetime) -> datetime:
    return now.replace(minute=0, second=0, microsecond=0) + HOUR


def picked(evaluation: dict, tick: datetime) -> str:
    assert not evaluation["skipReason"], evaluation
    [request] = evaluation["runRequests"]
    tags = {t["key"]: t["value"] for t in request["tags"]}
    assert request["runKey"] == f"replay_cycle:{tick.isoformat()}", request
    assert tags["dagster/partition"] == tags[DAY_TAG]
    assert (tags[TOPIC_TAG], tags[PACING_TAG]) == ("click-data", "original")
    assert "pacing: original" in request["runConfigYaml"]
    return tags[DAY_TAG]


def test_schedule_ticks_take_consecutive_days(gql, idle_replays):
    """The UI's "Test schedule" (scheduleDryRun) for chosen tick times."""

    def day_at(tick: datetime) -> str:
        return picked(gql.schedule_dry_run(tick.timestamp()), tick)

    # The next two real ticks: consecutive days.
    tick = next_hour(datetime.now(timezone.utc))
    first, second = day_at(tick), day_at(tick + HOUR)
    assert DAYS.index(second) == (DAYS.index(first) + 1) % len(DAYS), (first, second)
    assert first == expected_cycle_day(tick)

    # Fifteen consecutive ticks replay each day once, in order; the sixteenth starts over.
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    start += HOUR * (-DAYS.index(expected_cycle_day(start)) % len(DAYS))  # a tick that takes 2012-03-01
    cycle = [day_at(start + HOUR * i) for i in range(len(DAYS) + 1)]
    assert cycle[:-1] == DAYS
    assert (cycle[-2], cycle[-1]) == ("2012-03-15", "2012-03-01")

    # The same tick always takes the same day (a second evaluation, or asked a bit before it).
    assert day_at(start + HOUR * 7) == cycle[7]
    assert picked(gql.schedule_dry_run((start + HOUR * 7).timestamp() - 600), start + HOUR * 7) == cycle[7]


def test_schedule_skips_a_tick_while_a_replay_runs(gql, prepared_days, replay_topic, idle_replays):
    day = "2012-03-10"
    tick = next_hour(datetime.now(timezone.utc))
    run_id = gql.submit_replay(day, replay_config(replay_topic, pacing="fixed", interval_ms=500))
    try:
        run = gql.wait_for_run(run_id, statuses={"STARTED", *TERMINAL})
        assert run["status"] == "STARTED", gql.describe_run(run_id)
        evaluation = gql.schedule_dry_run(tick.timestamp())
        assert not evaluation["runRequests"], evaluation
        reason = evaluation["skipReason"] or ""
        assert run_id[:8] in reason and day in reason and "STARTED" in reason, reason
    finally:
        gql.terminate(run_id)
    assert gql.wait_for_run(run_id, timeout_s=90)["status"] == "CANCELED", gql.describe_run(run_id)

    # Nothing in progress any more: the same tick now asks for its run.
    assert not gql.runs(job_name=REPLAY_JOB, statuses=IN_PROGRESS)
    assert picked(gql.schedule_dry_run(tick.timestamp()), tick) == expected_cycle_day(tick)
