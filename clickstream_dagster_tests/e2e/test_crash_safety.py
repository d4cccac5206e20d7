"""Crash safety end to end (issue 7): kill -9 a replay's processes, let Dagster (or a person)
resume it, and read the topic back with a read_committed consumer.

The real ``dagster dev`` (webserver + daemon, run monitoring and run retries on, as the
project's ``.dagster_home/dagster.yaml`` says) and the real test broker. Every check compares
the committed messages with the day's rows in the prepared Parquet partition: each row exactly
once, and ``original_timestamp`` never going back within a visitor's key.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import polars as pl
import pytest

from clickstream_dagster.checkpoints import DEFAULT_CHECKPOINT_TOPIC, Checkpoint, ReplayStatus
from clickstream_dagster.encoding import PUBLISHED_COLUMNS
from clickstream_dagster.kafka_client import KafkaSettings, read_checkpoints
from clickstream_dagster_tests.e2e.conftest import (
    PROJECT_DAGSTER_YAML,
    REPO_ROOT,
    RUN_TIMEOUT_S,
    TOPIC_TAG,
    _cmdline,
    _is_alive,
    _proc_stat,
    process_tree,
    read_topic,
    run_tags,
    wait_for,
)

pytestmark = pytest.mark.e2e

# Days of the generated log with a couple of hundred rows each; paced so a replay lasts
# long enough (several seconds) to be killed in the middle.
DAY, OTHER_DAY, CLI_DAY, REEXEC_DAY = "2012-03-05", "2012-03-06", "2012-03-07", "2012-03-08"
INTERVAL_MS = 40
# Kill once this share of the day is committed: well inside the replay.
KILL_AT = 0.25
NO_RUN_RETRY = {"dagster/max_retries": "0"}

_REEXECUTE_MUTATION = """
mutation Reexecute($params: ReexecutionParams!) {
  launchRunReexecution(reexecutionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId rootRunId parentRunId } }
    ... on PythonError { message stack }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on Error { message }
  }
}
"""

_ROOT_QUERY = """
query Root($runId: ID!) { runOrError(runId: $runId) { ... on Run { runId rootRunId parentRunId status } } }
"""


# --------------------------------------------------------------------------- reading back


def day_records(records: list, day: str) -> list:
    return [r for r in records if dict(r.headers).get("source_day") == day.encode()]


def day_rows(storage_dir: Path, day: str) -> pl.DataFrame:
    """The prepared day, as the replay reads it (the Parquet partition in the storage dir)."""
    path = storage_dir / "clickstream_events" / f"{day}.parquet"
    assert path.exists(), f"{path} missing: the day was not prepared"
    return pl.read_parquet(path)


def _row_identity(values: dict) -> tuple:
    return tuple(values[c] for c in PUBLISHED_COLUMNS)


def assert_exactly_once(records: list, rows: pl.DataFrame, day: str) -> None:
    """Every row of the day exactly once, and per key, ``original_timestamp`` in order."""
    bodies = [json.loads(r.value) for r in records]
    sent = Counter(_row_identity(b) for b in bodies)
    expected = Counter(_row_identity(r) for r in rows.select(PUBLISHED_COLUMNS).iter_rows(named=True))
    duplicates = {k: n for k, n in sent.items() if n > 1}
    missing = expected - sent
    extra = sent - expected
    assert not duplicates and not missing and not extra, (
        f"{day}: {len(records)} committed messages for {rows.height} rows; "
        f"{len(duplicates)} rows more than once, {len(missing)} missing, {len(extra)} not of the day"
    )
    by_key: dict[bytes, list] = {}
    for record, body in sorted(zip(records, bodies), key=lambda rb: (rb[0].partition, rb[0].offset)):
        by_key.setdefault(record.key, []).append((record.partition, body["original_timestamp"]))
    backwards = [
        key for key, seen in by_key.items()
        if len({p for p, _ in seen}) > 1 or any(a[1] > b[1] for a, b in zip(seen, seen[1:]))
    ]
    assert not backwards, f"{day}: original_timestamp goes back (or the key moved partition) for {len(backwards)} keys"


def checkpoint_of(bootstrap_servers: str, topic: str, day: str) -> Checkpoint | None:
    """The replay checkpoint committed for (topic, day), as the replay itself reads it."""
    settings = KafkaSettings(bootstrap_servers=bootstrap_servers, client_id="e2e-crash-checkpoints")
    found = [c for c in read_checkpoints(settings, DEFAULT_CHECKPOINT_TOPIC) if c.topic == topic and c.day == day]
    return found[-1] if found else None


def writer_pid(checkpoint: Checkpoint) -> int:
    """The pid of the step process that wrote ``checkpoint`` (its ``owner``: "host pid N")."""
    match = re.search(r"pid (\d+)$", checkpoint.owner)
    assert match, f"checkpoint owner {checkpoint.owner!r} names no pid"
    return int(match.group(1))


def wait_for_progress(bootstrap_servers: str, topic: str, day: str, run_id: str, rows: int) -> Checkpoint:
    """The run's running checkpoint once it covers a good part of the day (KILL_AT)."""
    return wait_for(
        lambda: (c := checkpoint_of(bootstrap_servers, topic, day)) is not None
        and c.run_id == run_id and c.status == ReplayStatus.RUNNING and c.next_row >= int(rows * KILL_AT) and c,
        timeout_s=RUN_TIMEOUT_S,
        what=f"run {run_id[:8]} to commit {KILL_AT:.0%} of {day} into {topic}",
        interval_s=0.3,
    )


def wait_until_gone(pid: int, timeout_s: float, what: str) -> None:
    wait_for(lambda: not _is_alive(pid), timeout_s=timeout_s, what=what, interval_s=0.2,
             details=lambda: f"{pid}: {_cmdline(pid)}")


# --------------------------------------------------------------------------- GraphQL


def reexecute(gql, parent_run_id: str, strategy: str = "FROM_FAILURE") -> dict:
    result = gql.execute(_REEXECUTE_MUTATION, params={"parentRunId": parent_run_id, "strategy": strategy})
    launched = result["launchRunReexecution"]
    assert launched["__typename"] == "LaunchRunSuccess", json.dumps(launched, indent=1)[:3000]
    return launched["run"]


def lineage(gql, run_id: str) -> dict:
    return gql.execute(_ROOT_QUERY, runId=run_id)["runOrError"]


def submit(gql, day: str, topic: str, tags: dict | None = None, **config) -> str:
    settings = {"topic": topic, "pacing": "fixed", "interval_ms": INTERVAL_MS, **config}
    return gql.submit_replay(day, settings, tags={TOPIC_TAG: topic, **(tags or {})})


# --------------------------------------------------------------------------- tests


def test_killed_run_worker_is_retried_and_the_queued_replay_follows(
    gql, dagster_dev, prepared_days, replay_topic, kafka_bootstrap_servers, idle_replays
):
    rows, other_rows = day_rows(dagster_dev.storage_dir, DAY), day_rows(dagster_dev.storage_dir, OTHER_DAY)
    first = submit(gql, DAY, replay_topic)
    progress = wait_for_progress(kafka_bootstrap_servers, replay_topic, DAY, first, rows.height)
    # Queued behind the first by the topic's tag limit.
    queued = submit(gql, OTHER_DAY, replay_topic)

    step = writer_pid(progress)
    stat = _proc_stat(step)
    assert stat is not None, f"the step process {step} is gone already"
    worker = stat[0]
    # Only the run worker: never the daemon, the webserver or a code server (all known at start).
    assert worker not in dagster_dev.known_pids, f"{worker} ({_cmdline(worker)}) is a process of dagster dev itself"
    assert worker in process_tree(dagster_dev.proc.pid, dagster_dev.proc.pid), f"{worker} is not under dagster dev"
    os.kill(worker, signal.SIGKILL)
    # The orphaned step notices its launcher is gone and stops sending.
    wait_until_gone(step, 60, f"the orphaned step process {step} to exit")

    killed = gql.wait_for_run(first)
    assert killed["status"] == "FAILURE", gql.describe_run(first)

    def retry_run() -> dict | None:
        retries = [r for r in gql.runs(tags={"dagster/parent_run_id": first}) if r["runId"] != first]
        return retries[0] if retries else None

    retry = wait_for(retry_run, timeout_s=RUN_TIMEOUT_S, what=f"a run retry of {first}", details=gql.details)
    assert lineage(gql, retry["runId"])["rootRunId"] == first
    assert run_tags(retry).get("dagster/retry_number") == "1"
    done = gql.wait_for_run(retry["runId"])
    assert done["status"] == "SUCCESS", gql.describe_run(retry["runId"])
    other = gql.wait_for_run(queued)
    assert other["status"] == "SUCCESS", gql.describe_run(queued)

    records = read_topic(kafka_bootstrap_servers, replay_topic)
    assert_exactly_once(day_records(records, DAY), rows, DAY)
    assert_exactly_once(day_records(records, OTHER_DAY), other_rows, OTHER_DAY)
    assert len(records) == rows.height + other_rows.height
    final = checkpoint_of(kafka_bootstrap_servers, replay_topic, DAY)
    assert (final.status, final.next_row, final.replay_id) == (ReplayStatus.FINISHED, rows.height, first)


def test_reexecution_over_graphql_resumes_a_killed_replay(
    gql, dagster_dev, prepared_days, replay_topic, kafka_bootstrap_servers, idle_replays
):
    rows = day_rows(dagster_dev.storage_dir, REEXEC_DAY)
    # No run retry for this one: a person re-executes it.
    first = submit(gql, REEXEC_DAY, replay_topic, tags=NO_RUN_RETRY)
    progress = wait_for_progress(kafka_bootstrap_servers, replay_topic, REEXEC_DAY, first, rows.height)
    step = writer_pid(progress)
    assert step not in dagster_dev.known_pids
    os.kill(step, signal.SIGKILL)  # the step process alone: its run fails
    failed = gql.wait_for_run(first)
    assert failed["status"] == "FAILURE", gql.describe_run(first)
    before = len(day_records(read_topic(kafka_bootstrap_servers, replay_topic), REEXEC_DAY))
    assert 0 < before < rows.height

    rerun = reexecute(gql, first, "FROM_FAILURE")
    assert rerun["rootRunId"] == first
    done = gql.wait_for_run(rerun["runId"])
    assert done["status"] == "SUCCESS", gql.describe_run(rerun["runId"])

    records = day_records(read_topic(kafka_bootstrap_servers, replay_topic), REEXEC_DAY)
    assert_exactly_once(records, rows, REEXEC_DAY)
    [materialization] = [m for m in gql.materializations(rerun["runId"]) if m["asset"] == "click_data"]
    meta = materialization["metadata"]
    assert meta["start_row"] > 0 and meta["resumed_from_run"] == first
    assert meta["messages"] == rows.height - meta["start_row"]


def _cli_env(dagster_dev, home: Path) -> dict:
    env = dict(os.environ)
    env.update(
        DAGSTER_HOME=str(home),
        KAFKA_BOOTSTRAP_SERVERS=dagster_dev.bootstrap_servers,
        CLICKSTREAM_CSV=str(dagster_dev.csv_path),
        CLICKSTREAM_STORAGE_DIR=str(dagster_dev.storage_dir),
        PYTHONUNBUFFERED="1",
    )
    return env


def _materialize(env: dict, day: str, config: dict, log: Path) -> subprocess.Popen:
    dagster_bin = Path(sys.executable).with_name("dagster")
    command = [str(dagster_bin)] if dagster_bin.exists() else [sys.executable, "-m", "dagster"]
    command += [
        "asset", "materialize", "-m", "clickstream_dagster.definitions", "--select", "click_data",
        "--partition", day, "--config-json", json.dumps({"ops": {"click_data": {"config": config}}}),
    ]
    with log.open("wb") as out:
        # Its own session: the test can clean up the whole group, and kill the launcher alone.
        return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _stop_group(proc: subprocess.Popen) -> None:
    """Whatever is left of a CLI launch (its step subprocess included): SIGKILL its session's group."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def test_kill_of_the_cli_launcher_stops_its_step_then_resume_completes(
    dagster_dev, prepared_days, replay_topic, kafka_bootstrap_servers, tmp_path
):
    rows = day_rows(dagster_dev.storage_dir, CLI_DAY)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_DAGSTER_YAML, home / "dagster.yaml")
    env = _cli_env(dagster_dev, home)
    config = {"topic": replay_topic, "pacing": "fixed", "interval_ms": INTERVAL_MS}

    launcher = _materialize(env, CLI_DAY, config, tmp_path / "first.log")
    resumed = None
    try:
        def running() -> Checkpoint | None:
            if launcher.poll() is not None:
                raise AssertionError(f"the CLI exited early ({launcher.returncode}):\n{(tmp_path / 'first.log').read_text()[-3000:]}")
            c = checkpoint_of(kafka_bootstrap_servers, replay_topic, CLI_DAY)
            return c if c is not None and c.status == ReplayStatus.RUNNING and c.next_row >= rows.height * KILL_AT else None

        progress = wait_for(running, timeout_s=RUN_TIMEOUT_S, what=f"the CLI replay to commit {KILL_AT:.0%} of {CLI_DAY}",
                            interval_s=0.3)
        step = writer_pid(progress)
        assert step != launcher.pid and _proc_stat(step) is not None and _proc_stat(step)[0] == launcher.pid
        os.kill(launcher.pid, signal.SIGKILL)  # the launching process only
        launcher.wait(timeout=10)

        # The orphaned step stops within seconds and says so in its checkpoint.
        stopped = wait_for(
            lambda: (c := checkpoint_of(kafka_bootstrap_servers, replay_topic, CLI_DAY)) is not None
            and c.status == ReplayStatus.STOPPED and c,
            timeout_s=30,
            what=f"the orphaned step {step} to record that it stopped",
            interval_s=0.3,
        )
        wait_until_gone(step, 30, f"the orphaned step process {step} to exit")
        assert stopped.next_row < rows.height, "the day was over before the kill: nothing was tested"
        committed = day_records(read_topic(kafka_bootstrap_servers, replay_topic), CLI_DAY)
        assert len(committed) == stopped.next_row
        # Nothing more arrives once it has stopped: by then the step process is gone for good.

        resumed = _materialize(env, CLI_DAY, {**config, "resume": True}, tmp_path / "resume.log")
        assert resumed.wait(timeout=RUN_TIMEOUT_S) == 0, (tmp_path / "resume.log").read_text()[-4000:]
    finally:
        _stop_group(launcher)
        if resumed is not None:
            _stop_group(resumed)

    records = day_records(read_topic(kafka_bootstrap_servers, replay_topic), CLI_DAY)
    assert_exactly_once(records, rows, CLI_DAY)
    final = checkpoint_of(kafka_bootstrap_servers, replay_topic, CLI_DAY)
    assert (final.status, final.next_row) == (ReplayStatus.FINISHED, rows.height)
    assert "resuming at row" in (tmp_path / "resume.log").read_text(errors="replace")
