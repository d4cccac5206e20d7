"""The live feed in the real webserver and daemon: switched on over GraphQL as the UI's toggle
does, it replays the days one after the other, each a run, without overlap and without silence
between days (the next day's run waits, already up, for the day before to finish), and goes on
for ever: on a two-day window (CLICKSTREAM_DAYS), two rounds show event time going forward across
the round boundary and new visitors in the second round.

Its own ``dagster dev`` (the module's ``dagster_dev`` below overrides conftest's): the feed's
settings are environment variables read when the code location loads. At speed 1000 with gaps
clamped to 0.5..2 s and 60 messages a day, a day takes about 30 s of sending: time for the next
day's run to start on a busy machine while it plays. A limited day's last page view is early in
its day, so the gap to the next day's first is clamped to max_delay_s: the boundary's target, 2 s
like a recorded gap at speed 1 (taking the topic over takes about 1-1.7 s here: a shorter target
would measure that instead).
"""

import datetime as dt
import itertools
import json
import uuid
from collections.abc import Iterator

import pytest

from clickstream_dagster_tests.e2e.conftest import (
    DAY_TAG,
    DAYS,
    LOCATION_NAME,
    PACING_TAG,
    REPLAY_JOB,
    REPOSITORY_NAME,
    RUN_TIMEOUT_S,
    TERMINAL,
    TOPIC_TAG,
    DagsterDev,
    DagsterGraphQL,
    read_topic,
    running_dagster_dev,
    run_tags,
    wait_for,
)

pytestmark = pytest.mark.e2e

FEED = "replay_feed"
FEED_TOPIC = f"e2e-live-feed-{uuid.uuid4().hex[:8]}"
PER_DAY = 60
WINDOW = DAYS[:2]
FEED_SETTINGS = {
    "CLICKSTREAM_DAYS": f"{WINDOW[0]}..{WINDOW[-1]}",
    "REPLAY_FEED_TOPIC": FEED_TOPIC,
    "REPLAY_FEED_SPEED": "1000",
    "REPLAY_FEED_CONFIG": json.dumps({"limit": PER_DAY, "min_delay_s": 0.5, "max_delay_s": 2.0}),
}
BOUNDARY_TARGET_S = 2.0  # max_delay_s
# A day's first page view waits for the recorded gap after the previous day's last one: at least
# half of it, allowing for the previous day's last send being late on a loaded machine. How close
# to the gap it comes (the issue asks for 1 s) is a figure in the metadata, not asserted here:
# the machine is shared, and the takeover alone takes 1-1.7 s when it is quiet.
BOUNDARY_AT_LEAST_S = BOUNDARY_TARGET_S / 2
DAYS_WATCHED = 4  # two rounds of the window
WATCHED_DAYS = [WINDOW[n % len(WINDOW)] for n in range(DAYS_WATCHED)]

_SENSOR_STATE = """
query SensorState($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename ... on Sensor { sensorState { id status ticks(limit: 20) { status skipReason runIds error { message } } } }
  }
}
"""
_START = """
mutation Start($selector: SensorSelector!) {
  startSensor(sensorSelector: $selector) {
    __typename ... on Sensor { sensorState { status } } ... on PythonError { message stack }
  }
}
"""
_STOP = """
mutation Stop($id: String!) {
  stopSensor(id: $id) {
    __typename ... on StopSensorMutationResult { instigationState { status } } ... on PythonError { message }
  }
}
"""
SELECTOR = {"repositoryLocationName": LOCATION_NAME, "repositoryName": REPOSITORY_NAME, "sensorName": FEED}


@pytest.fixture(scope="module")
def dagster_dev(kafka_bootstrap_servers, local_kafka, tmp_path_factory) -> Iterator[DagsterDev]:
    """conftest's ``dagster_dev``, with the feed's settings in its environment."""
    with pytest.MonkeyPatch.context() as env:
        for name, value in FEED_SETTINGS.items():
            env.setenv(name, value)
        with running_dagster_dev(tmp_path_factory, kafka_bootstrap_servers, local_kafka, name="dagster-dev-feed") as dev:
            yield dev


def feed_state(gql: DagsterGraphQL) -> dict:
    return gql.execute(_SENSOR_STATE, selector=SELECTOR)["sensorOrError"]["sensorState"]


def feed_runs(gql: DagsterGraphQL) -> list[dict]:
    """The feed's runs, oldest first."""
    return sorted(gql.runs(job_name=REPLAY_JOB, tags={"dagster/sensor_name": FEED}), key=lambda r: r["creationTime"])


def launched_at(gql: DagsterGraphQL, run_id: str) -> float:
    """When the queue launched the run (its RUN_STARTING event), epoch seconds."""
    [event] = [e for e in gql.events(run_id) if e["__typename"] == "RunStartingEvent"]
    return int(event["timestamp"]) / 1000


def test_the_feed_is_stopped_until_switched_on(gql, prepared_days):
    assert feed_state(gql)["status"] == "STOPPED"
    assert not feed_runs(gql)


def test_days_follow_each_other_without_overlap_or_gap(gql, prepared_days, kafka_bootstrap_servers):
    started = gql.execute(_START, selector=SELECTOR)["startSensor"]
    assert started["__typename"] == "Sensor" and started["sensorState"]["status"] == "RUNNING", started

    def watched_days_done() -> list[dict] | None:
        runs = feed_runs(gql)
        done = [r for r in runs[:DAYS_WATCHED] if r["status"] in TERMINAL]
        return runs if len(done) == DAYS_WATCHED else None

    try:
        runs = wait_for(
            watched_days_done,
            timeout_s=DAYS_WATCHED * RUN_TIMEOUT_S,
            what=f"{DAYS_WATCHED} days of the live feed",
            interval_s=1.0,
            details=lambda: json.dumps(feed_state(gql), indent=1) + "\n" + gql.details(),
        )
    finally:
        stop = gql.execute(_STOP, id=feed_state(gql)["id"])["stopSensor"]
        for run in feed_runs(gql):
            if run["status"] not in TERMINAL and run["status"] != "CANCELING":
                gql.terminate(run["runId"])
    assert stop["__typename"] == "StopSensorMutationResult", stop
    watched = runs[:DAYS_WATCHED]

    # Every day is a run of replay_clickstream, in order from the first day, tagged as replays are.
    for run, day in zip(watched, WATCHED_DAYS, strict=True):
        assert run["status"] == "SUCCESS", gql.describe_run(run["runId"])
        tags = run_tags(run)
        assert tags["dagster/partition"] == day
        assert (tags[TOPIC_TAG], tags[PACING_TAG], tags[DAY_TAG]) == (FEED_TOPIC, "original", day)

    # The next day's run is launched while the day before plays (how long before it ended).
    ahead = [
        round(before["endTime"] - launched_at(gql, after["runId"]), 1) for before, after in itertools.pairwise(watched)
    ]

    # In the topic: each day's messages, all of one day before any of the next.
    records = read_topic(kafka_bootstrap_servers, FEED_TOPIC)
    by_run: dict[str, list] = {}
    for record in records:
        by_run.setdefault(dict(record.headers)["dagster_run_id"].decode(), []).append(record)
    runs_ids = [run["runId"] for run in watched]
    expected = [min(PER_DAY, prepared_days[day]) for day in WATCHED_DAYS]
    assert [len(by_run.get(run_id, [])) for run_id in runs_ids] == expected
    spans = [(min(r.timestamp for r in by_run[i]), max(r.timestamp for r in by_run[i])) for i in runs_ids]
    assert all(before[1] < after[0] for before, after in itertools.pairwise(spans)), spans

    # No silence between days: the next day's first page view went out the recorded gap (clamped,
    # at the speed) after the previous day's last one, measured from the send times the values
    # carry; each day after the first reports that gap and its target.
    sent_ms = [sorted(json.loads(r.value)["timestamp"] for r in by_run[i]) for i in runs_ids]
    gaps = [(after[0] - before[-1]) / 1000 for before, after in itertools.pairwise(sent_ms)]
    shown = f"boundary gaps {gaps} s (target {BOUNDARY_TARGET_S} s); next days launched {ahead} s before the end"
    assert all(gap >= BOUNDARY_AT_LEAST_S for gap in gaps), shown
    for run_id, gap in zip(runs_ids[1:], gaps, strict=True):
        [materialization] = [m for m in gql.materializations(run_id) if m["asset"] == "click_data"]
        metadata = materialization["metadata"]
        assert metadata["boundary_target_s"] == pytest.approx(BOUNDARY_TARGET_S), metadata
        assert metadata["boundary_gap_s"] == pytest.approx(gap, abs=0.002), (metadata, shown)

    # Event time goes forward for ever: the n-th day played is the window's first day + n, across
    # the round boundary too; the second round's visitors are new ids.
    values = [[json.loads(r.value) for r in by_run[run_id]] for run_id in runs_ids]
    dates = [{dt.datetime.fromtimestamp(v["original_timestamp"], dt.UTC).date().isoformat() for v in vs} for vs in values]
    first = dt.date.fromisoformat(WINDOW[0])
    assert dates == [{(first + dt.timedelta(days=n)).isoformat()} for n in range(DAYS_WATCHED)], dates
    times = [(min(v["original_timestamp"] for v in vs), max(v["original_timestamp"] for v in vs)) for vs in values]
    assert all(before[1] < after[0] for before, after in itertools.pairwise(times)), times
    visitors = [{v["userId"] for v in vs} for vs in values]
    rounds = [set().union(*visitors[:2]), set().union(*visitors[2:])]
    assert rounds[0].isdisjoint(rounds[1]) and all(rounds)
    print(shown)

