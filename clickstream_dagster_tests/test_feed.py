"""replay_feed: the days one after the other, wrapping, the next one up while one plays (it follows
that one without a gap); its state is the run history (a restarted daemon goes on), a failed day is
reported and skipped."""

import datetime as dt
import json
from pathlib import Path

import pytest
import yaml
from dagster import DagsterRunStatus, RunRequest, build_sensor_context, instance_for_test

from clickstream_dagster.definitions import defs
from clickstream_dagster.feed import (
    FeedRun,
    FeedStep,
    backoff_s,
    day_after,
    failure_note,
    feed_run_config,
    newly_finished,
    next_step,
)
from clickstream_dagster.partitions import clickstream_days
from clickstream_dagster import sensors
from clickstream_dagster.sensors import REPLAY_FEED, replay_feed, topic_runs_one_at_a_time

DAYS = clickstream_days.get_partition_keys()
KEYS = {"topic", "pacing", "speed", "limit", "max_delay_s", "resume", "restart"}
PROJECT_DAGSTER_YAML = Path(__file__).resolve().parents[1] / ".dagster_home" / "dagster.yaml"


def run(n: int, day: str, status: str, ended_at: float | None = None) -> FeedRun:
    return FeedRun(f"run{n:04d}-feed", day, status, ended_at)


# --------------------------------------------------------------------------- pure: the next day


def test_the_days_follow_each_other_and_wrap_after_the_fifteenth():
    assert day_after(None, DAYS) == "2012-03-01"
    assert [day_after(d, DAYS) for d in DAYS] == DAYS[1:] + DAYS[:1]
    assert day_after("2011-01-01", DAYS) == "2012-03-01"  # a day no longer in the dataset


def test_the_feed_starts_with_the_first_day():
    step = next_step([], DAYS, queue_ahead=True, now=0)
    assert (step.day, step.after) == ("2012-03-01", None)


def test_the_next_day_is_queued_behind_the_one_playing():
    step = next_step(
        [run(2, "2012-03-04", "STARTED"), run(1, "2012-03-03", "SUCCESS", 10)], DAYS, queue_ahead=True, now=20
    )
    assert (step.day, step.after) == ("2012-03-05", "run0002-feed")


def test_without_a_queue_per_topic_the_next_day_waits_for_the_end_of_the_current_one():
    step = next_step([run(2, "2012-03-04", "STARTED")], DAYS, queue_ahead=False, now=20)
    assert step.day is None and "2012-03-05 follows when it ends" in step.reason
    step = next_step([run(2, "2012-03-04", "SUCCESS", 30)], DAYS, queue_ahead=False, now=31)
    assert step.day == "2012-03-05"


def test_one_day_waits_in_the_queue_never_two():
    runs = [run(3, "2012-03-05", "QUEUED"), run(2, "2012-03-04", "STARTED")]
    step = next_step(runs, DAYS, queue_ahead=True, now=0)
    assert step.day is None and "2012-03-05 is queued next (run run0003-)" in step.reason


def test_one_day_waits_in_its_run_for_the_one_playing_never_two():
    """The next day's run starts at once (not queued behind the topic) and waits in its process."""
    runs = [run(3, "2012-03-05", "STARTED"), run(2, "2012-03-04", "STARTED"), run(1, "2012-03-03", "SUCCESS", 1)]
    step = next_step(runs, DAYS, queue_ahead=True, now=5)
    assert step.day is None and "2012-03-05 is up next (run run0003-), waiting for 2012-03-04 to end" in step.reason
    step = next_step([run(3, "2012-03-05", "STARTED"), run(2, "2012-03-04", "SUCCESS", 9)], DAYS, queue_ahead=True, now=10)
    assert (step.day, step.after) == ("2012-03-06", "run0003-feed")


def test_after_the_fifteenth_comes_the_first():
    assert next_step([run(1, "2012-03-15", "SUCCESS", 1)], DAYS, queue_ahead=True, now=2).day == "2012-03-01"


def test_a_failed_or_cancelled_day_is_followed_by_the_next():
    for status in ("FAILURE", "CANCELED"):
        runs = [run(2, "2012-03-07", status, 5), run(1, "2012-03-06", "SUCCESS", 4)]
        assert next_step(runs, DAYS, queue_ahead=True, now=6).day == "2012-03-08"
    note = failure_note(run(2, "2012-03-07", "FAILURE"), DAYS)
    assert note == "2012-03-07 (run run0002-) ended FAILURE; the feed goes on with 2012-03-08"


def test_days_failing_in_a_row_slow_the_feed_down():
    runs = [
        run(3, "2012-03-07", "FAILURE", 100.0),
        run(2, "2012-03-06", "FAILURE", 90.0),
        run(1, "2012-03-05", "SUCCESS", 80),
    ]
    waiting = next_step(runs, DAYS, queue_ahead=True, now=110.0)
    assert waiting.day is None and "the last 2 days failed; 2012-03-08 starts in 20 s" in waiting.reason
    assert next_step(runs, DAYS, queue_ahead=True, now=130.0).day == "2012-03-08"
    # And nothing is queued ahead of a day that may fail the same way.
    playing = [run(4, "2012-03-08", "STARTED"), *runs]
    assert next_step(playing, DAYS, queue_ahead=True, now=1000.0).day is None
    assert [backoff_s(n) for n in (0, 1, 2, 3, 4, 10)] == [0, 0, 30, 60, 120, 600]


def test_finished_runs_are_reported_once_oldest_first():
    runs = [
        run(4, "d4", "STARTED"),
        run(3, "d3", "FAILURE"),
        run(2, "d2", "SUCCESS"),
        run(1, "d1", "FAILURE"),
    ]
    assert [r.day for r in newly_finished(runs, "run0001-feed")] == ["d2", "d3"]
    assert newly_finished(runs, "run0003-feed") == []
    assert [r.day for r in newly_finished(runs, "")] == ["d1", "d2", "d3"]
    assert newly_finished(runs, None) == []


# --------------------------------------------------------------------------- pure: settings


def test_settings_default_to_original_timing_at_speed_one_into_click_data():
    assert feed_run_config({}, KEYS, "click-data") == {
        "topic": "click-data",
        "pacing": "original",
        "speed": 1.0,
        "restart": True,  # a day that comes round again is played whole
    }


def test_settings_from_the_environment():
    environ = {
        "REPLAY_FEED_SPEED": "50",
        "REPLAY_FEED_TOPIC": "feed",
        "REPLAY_FEED_CONFIG": '{"limit": 20, "max_delay_s": 2}',
    }
    assert feed_run_config(environ, KEYS, "click-data") == {
        "topic": "feed",
        "pacing": "original",
        "speed": 50.0,
        "restart": True,
        "limit": 20,
        "max_delay_s": 2,
    }


def test_a_feed_configured_to_resume_unfinished_days_does_not_also_restart_them():
    config = feed_run_config({"REPLAY_FEED_CONFIG": '{"resume": true}'}, KEYS, "click-data")
    assert config["resume"] is True and "restart" not in config


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"REPLAY_FEED_SPEED": "fast"}, "REPLAY_FEED_SPEED='fast'"),
        ({"REPLAY_FEED_SPEED": "0"}, "REPLAY_FEED_SPEED=0"),
        ({"REPLAY_FEED_CONFIG": "{limit: 2"}, "REPLAY_FEED_CONFIG is not JSON"),
        ({"REPLAY_FEED_CONFIG": "[1]"}, "REPLAY_FEED_CONFIG must be a JSON object"),
        ({"REPLAY_FEED_CONFIG": '{"limt": 2}'}, "unknown replay settings ['limt']"),
    ],
)
def test_a_bad_setting_is_refused_by_name(environ, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        feed_run_config(environ, KEYS, "click-data")


# --------------------------------------------------------------------------- the sensor, on a real instance


@pytest.fixture
def queued_instance():
    """A temporary instance with the project's run queue: one run per topic at a time."""
    concurrency = yaml.safe_load(PROJECT_DAGSTER_YAML.read_text())["concurrency"]
    with instance_for_test(overrides={"concurrency": {"runs": concurrency["runs"]}}) as instance:
        yield instance


def feed_run(instance, day: str, status: DagsterRunStatus) -> str:
    job = defs.resolve_job_def("replay_clickstream")
    tags = {"dagster/partition": day, "dagster/sensor_name": REPLAY_FEED}
    return instance.create_run_for_job(job, tags=tags, status=status).run_id


def evaluate(instance, cursor=None):
    return replay_feed(build_sensor_context(instance=instance, cursor=cursor))


def test_the_projects_queue_runs_one_replay_per_topic(queued_instance, dagster_instance):
    assert topic_runs_one_at_a_time(queued_instance, "click-data")
    assert not topic_runs_one_at_a_time(dagster_instance, "click-data")


def test_a_restarted_daemon_goes_on_after_the_last_day_played(queued_instance):
    feed_run(queued_instance, "2012-03-03", DagsterRunStatus.SUCCESS)
    last = feed_run(queued_instance, "2012-03-04", DagsterRunStatus.SUCCESS)
    result = evaluate(queued_instance)  # no cursor: the history alone says where the feed is
    [request] = result.run_requests
    assert isinstance(request, RunRequest)
    assert request.partition_key == "2012-03-05"
    assert request.run_key == f"replay_feed:{last}:2012-03-05"
    # No topic tag: the run is not queued behind the day before; its step adds the tag.
    assert request.tags == {"clickstream/pacing": "original", "clickstream/day": "2012-03-05"}
    # Runs without an event date (from before the feed moved days on) count as played as recorded.
    assert request.run_config == {
        "ops": {
            "click_data": {
                "config": {
                    "topic": "click-data", "pacing": "original", "speed": 1.0, "restart": True,
                    "event_date": "2012-03-05", "visitor_epoch": 0, "after_run": last,
                }
            }
        }
    }
    assert json.loads(result.cursor) == {"reported": last}


def test_the_next_day_is_queued_while_one_plays_and_only_one(queued_instance):
    playing = feed_run(queued_instance, "2012-03-15", DagsterRunStatus.STARTED)
    [request] = evaluate(queued_instance).run_requests
    assert (request.partition_key, request.run_key) == ("2012-03-01", f"replay_feed:{playing}:2012-03-01")
    # It follows the one playing without a gap: it waits for that run's replay to finish.
    assert request.run_config["ops"]["click_data"]["config"]["after_run"] == playing
    feed_run(
        queued_instance, "2012-03-01", DagsterRunStatus.NOT_STARTED
    )  # waiting: QUEUED needs a code origin
    result = evaluate(queued_instance)
    assert not result.run_requests
    assert "2012-03-01 is queued next" in result.skip_reason.skip_message


def test_a_failed_day_is_reported_and_the_feed_goes_on(queued_instance):
    reported = feed_run(queued_instance, "2012-03-05", DagsterRunStatus.SUCCESS)
    failed = feed_run(queued_instance, "2012-03-06", DagsterRunStatus.FAILURE)
    feed_run(queued_instance, "2012-03-07", DagsterRunStatus.STARTED)  # queued ahead, now playing
    result = evaluate(queued_instance, json.dumps({"reported": reported}))
    [request] = result.run_requests
    assert request.partition_key == "2012-03-08"
    assert json.loads(result.cursor) == {"reported": failed}

    queued = feed_run(
        queued_instance, "2012-03-08", DagsterRunStatus.NOT_STARTED
    )  # waiting: QUEUED needs a code origin
    skipped = evaluate(queued_instance, json.dumps({"reported": reported})).skip_reason.skip_message
    assert f"2012-03-06 (run {failed[:8]}) ended FAILURE; the feed goes on with 2012-03-07" in skipped
    assert f"2012-03-08 is queued next (run {queued[:8]})" in skipped
    # Reported once: the next tick's cursor has it.
    assert (
        "FAILURE" not in evaluate(queued_instance, json.dumps({"reported": failed})).skip_reason.skip_message
    )


def test_runs_not_launched_by_the_feed_do_not_move_it(queued_instance):
    job = defs.resolve_job_def("replay_clickstream")
    queued_instance.create_run_for_job(
        job, tags={"dagster/partition": "2012-03-09"}, status=DagsterRunStatus.SUCCESS
    )
    [request] = evaluate(queued_instance).run_requests
    assert request.partition_key == "2012-03-01"


def test_a_reexecuted_day_does_not_move_the_feed_on():
    """A crashed day retried by Dagster (queued behind the day after it) replays that day again;
    the feed still goes on from the last day it asked for, not from the retried one."""
    crashed = FeedRun("run0001-feed", "2012-03-04", "FAILURE", 10, will_retry=True)
    retry = FeedRun("run0003-feed", "2012-03-04", "STARTED", reexecutes="run0001-feed")
    runs = [retry, run(2, "2012-03-05", "SUCCESS", 20), crashed]
    step = next_step(runs, DAYS, queue_ahead=True, now=30)
    assert (step.day, step.after) == ("2012-03-06", "run0002-feed")
    assert failure_note(crashed, DAYS) == (
        "2012-03-04 (run run0001-) ended FAILURE; Dagster re-executes it; the feed goes on with 2012-03-05"
    )


def test_a_retry_of_a_feed_run_on_the_instance_is_seen_as_a_reexecution(queued_instance):
    first = feed_run(queued_instance, "2012-03-04", DagsterRunStatus.FAILURE)
    job = defs.resolve_job_def("replay_clickstream")
    tags = {"dagster/partition": "2012-03-04", "dagster/sensor_name": REPLAY_FEED}
    queued_instance.create_run_for_job(
        job, tags=tags, status=DagsterRunStatus.SUCCESS, parent_run_id=first, root_run_id=first
    )
    [request] = evaluate(queued_instance).run_requests
    assert (request.partition_key, request.run_key) == ("2012-03-05", f"replay_feed:{first}:2012-03-05")


# --------------------------------------------------------------------------- forward for ever


def play(days, requests: int) -> list[FeedStep]:
    """The feed's requests, each day succeeding before the next, from a fresh start."""
    runs, steps = [], []
    for n in range(requests):
        step = next_step(runs, days, queue_ahead=True, now=n)
        steps.append(step)
        runs.insert(
            0, FeedRun(f"run{n:04d}", step.day, "SUCCESS", n, event_date=step.event_date, visitor_epoch=step.visitor_epoch)
        )
    return steps


def test_event_time_goes_forward_for_ever_and_each_round_brings_new_visitors():
    steps = play(DAYS, 31)
    assert [(s.day, s.event_date, s.visitor_epoch) for s in steps[:2]] == [
        ("2012-03-01", "2012-03-01", 0), ("2012-03-02", "2012-03-02", 0),
    ]
    assert (steps[15].day, steps[15].event_date, steps[15].visitor_epoch) == ("2012-03-01", "2012-03-16", 1)
    assert (steps[30].day, steps[30].event_date, steps[30].visitor_epoch) == ("2012-03-01", "2012-03-31", 2)
    dates = [dt.date.fromisoformat(s.event_date) for s in steps]
    assert all(b - a == dt.timedelta(days=1) for a, b in zip(dates, dates[1:]))
    assert "2012-03-01 as of 2012-03-16, visitor epoch 1 follows 2012-03-15" in steps[15].reason


def test_a_two_day_window_moves_on_by_two_days_a_round():
    steps = play(["2012-03-04", "2012-03-05"], 5)
    assert [(s.day, s.event_date, s.visitor_epoch) for s in steps] == [
        ("2012-03-04", "2012-03-04", 0), ("2012-03-05", "2012-03-05", 0),
        ("2012-03-04", "2012-03-06", 1), ("2012-03-05", "2012-03-07", 1),
        ("2012-03-04", "2012-03-08", 2),
    ]


def test_a_reexecuted_day_keeps_event_time_going_forward():
    runs = [
        FeedRun("run0003", "2012-03-04", "STARTED", reexecutes="run0001", event_date="2012-03-19", visitor_epoch=1),
        FeedRun("run0002", "2012-03-05", "SUCCESS", 20, event_date="2012-03-20", visitor_epoch=1),
        FeedRun("run0001", "2012-03-04", "FAILURE", 10, will_retry=True, event_date="2012-03-19", visitor_epoch=1),
    ]
    step = next_step(runs, DAYS, queue_ahead=True, now=30)
    assert (step.day, step.event_date, step.visitor_epoch) == ("2012-03-06", "2012-03-21", 1)


def feed_run_with(instance, day: str, status: DagsterRunStatus, **config) -> str:
    job = defs.resolve_job_def("replay_clickstream")
    tags = {"dagster/partition": day, "dagster/sensor_name": REPLAY_FEED}
    run_config = {"ops": {"click_data": {"config": config}}}
    return instance.create_run_for_job(job, tags=tags, status=status, run_config=run_config).run_id


def test_a_restarted_daemon_goes_on_in_event_time_and_round_from_the_runs(queued_instance):
    feed_run_with(queued_instance, "2012-03-15", DagsterRunStatus.SUCCESS, event_date="2012-03-30", visitor_epoch=1)
    [request] = evaluate(queued_instance).run_requests
    config = request.run_config["ops"]["click_data"]["config"]
    assert (request.partition_key, config["event_date"], config["visitor_epoch"]) == ("2012-03-01", "2012-03-31", 2)


def test_replay_feed_config_switches_the_moving_on_off(queued_instance, monkeypatch):
    monkeypatch.setattr(sensors, "REPLAY_FEED_CONFIG", sensors.REPLAY_FEED_CONFIG | {"event_date": "recorded", "visitor_epoch": 0})
    feed_run_with(queued_instance, "2012-03-15", DagsterRunStatus.SUCCESS, event_date="recorded", visitor_epoch=0)
    [request] = evaluate(queued_instance).run_requests
    config = request.run_config["ops"]["click_data"]["config"]
    assert (request.partition_key, config["event_date"], config["visitor_epoch"]) == ("2012-03-01", "recorded", 0)
    # One of the two: the other still moves on.
    monkeypatch.setattr(sensors, "REPLAY_FEED_CONFIG", sensors.REPLAY_FEED_CONFIG | {"visitor_epoch": 0})
    monkeypatch.setattr(sensors, "REPLAY_FEED_CONFIG", {k: v for k, v in sensors.REPLAY_FEED_CONFIG.items() if k != "event_date"})
    [request] = evaluate(queued_instance).run_requests
    config = request.run_config["ops"]["click_data"]["config"]
    assert (config["event_date"], config["visitor_epoch"]) == ("2012-03-16", 0)


def test_after_a_day_played_as_of_today_the_feed_goes_on_from_that_date():
    runs = [FeedRun("run0001", "2012-03-04", "SUCCESS", dt.datetime(2026, 12, 2, 10, tzinfo=dt.UTC).timestamp(), event_date="today")]
    step = next_step(runs, DAYS, queue_ahead=True, now=runs[0].ended_at + 5)
    assert (step.day, step.event_date) == ("2012-03-05", "2026-12-03")
