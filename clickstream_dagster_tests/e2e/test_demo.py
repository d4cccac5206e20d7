"""`make demo` after setup: scripts/demo.py prepares every day, replays one, reads a few back."""

import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pytest
from dagster import AssetKey, DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter

from clickstream_dagster.generator import write_log
from clickstream_dagster.sensors import prepared_log_version
from clickstream_dagster_tests.e2e.conftest import DAYS, PROJECT_DAGSTER_YAML, REPO_ROOT, read_topic

pytestmark = pytest.mark.e2e

DEMO_DAY = "2012-03-02"
DEMO_TIMEOUT_S = float(os.environ.get("E2E_DEMO_TIMEOUT_S") or 600)
SHOWN = 5  # scripts/demo.py reads this many messages back


def test_demo_prepares_replays_and_reads_back(kafka_bootstrap_servers, tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_DAGSTER_YAML, home / "dagster.yaml")
    csv_path = tmp_path / "clickstream.csv"
    write_log(csv_path, rows=3000, seed=5)

    env = dict(os.environ)
    env.update(
        DAGSTER_HOME=str(home),
        KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap_servers,
        CLICKSTREAM_CSV=str(csv_path),
        DEMO_DAY=DEMO_DAY,
        PYTHONUNBUFFERED="1",
    )
    # The demo's own defaults: Parquet in the instance's storage directory, 2000 msgs/s.
    for var in ("CLICKSTREAM_STORAGE_DIR", "DEMO_RATE", "DEMO_TOPIC", "DEMO_WAIT", "DAGSTER_PORT", "KAFKA_PORT"):
        env.pop(var, None)
    try:
        done = subprocess.run(
            [sys.executable, str(REPO_ROOT / "scripts" / "demo.py")],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=DEMO_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"scripts/demo.py did not finish in {DEMO_TIMEOUT_S:.0f} s:\n{error.stdout}\n{error.stderr}")
    output = done.stdout
    shown = f"exit code {done.returncode}\n--- stdout ---\n{output}\n--- stderr (tail) ---\n{done.stderr[-4000:]}"
    assert done.returncode == 0, shown

    # What it did, as it says it.
    assert f"Preparing {DAYS[0]}..{DAYS[-1]} from {csv_path} ..." in output, shown
    # Every check evaluation (per day, and over the whole log) summed up in one line.
    checks = re.search(r"^  run (\w{8}): (\d+) checks passed$", output, re.M)
    assert checks and int(checks.group(2)) >= 3 * len(DAYS) + 1, shown
    # Where the day files are: in the instance's storage directory (CLICKSTREAM_STORAGE_DIR unset).
    storage = home / "storage"
    assert f"  day files: {storage}/clickstream_events/{DAYS[0]}.parquet .. {DAYS[-1]}.parquet" in output, shown
    assert f"  rejects:   {storage}/clickstream_rejects.parquet" in output, shown
    # The progress lines are shown one line each, without Dagster's DEBUG step events.
    assert re.search(r"^  \d\d:\d\d:\d\d INFO replay_clickstream - \w{8} - click_data - replaying ", done.stderr, re.M), shown
    assert " DEBUG " not in done.stderr and "Traceback" not in done.stderr, shown
    assert f"Replaying {DEMO_DAY} into click-data" in output, shown
    summary = re.search(r"^  run (\w{8}): (\d+) messages \((\d+) bytes\) acknowledged in", output, re.M)
    assert summary, shown
    messages = int(summary.group(2))
    assert int(summary.group(3)) > 0
    assert f"Reading {SHOWN} of them back from the topic:" in output, shown
    read_back = re.findall(r"^  p(\d+)@(\d+) key=(\S+) product=\S* ip=\S+ t=(\d+)$", output, re.M)
    assert len(read_back) == SHOWN, shown
    start = datetime.fromisoformat(DEMO_DAY).replace(tzinfo=timezone.utc)
    end = start + timedelta(days=1)
    assert all(start.timestamp() <= int(t) < end.timestamp() for *_, t in read_back), read_back
    assert "Done. `make dev` opens the Dagster UI at http://127.0.0.1:3000 with these runs" in output, shown

    # The whole day was replayed: as many messages as its prepared Parquet has rows
    # (in the instance's storage directory: CLICKSTREAM_STORAGE_DIR was unset).
    parquet = home / "storage" / "clickstream_events" / f"{DEMO_DAY}.parquet"
    assert parquet.is_file(), sorted(p.relative_to(home).as_posix() for p in home.rglob("*.parquet"))
    assert messages == pl.scan_parquet(parquet).select(pl.len()).collect().item() > 0

    # And the instance `make dev` would show holds both runs, successful.
    with DagsterInstance.from_config(str(home)) as instance:
        all_runs = instance.get_runs()
        # The log version the days were prepared from is known: `make dev`'s sensor keeps them.
        assert prepared_log_version(instance) == hashlib.sha256(csv_path.read_bytes()).hexdigest()
        runs = {run.job_name: run for run in all_runs}
        assert len(all_runs) == 2 and set(runs) == {"prepare_clickstream", "replay_clickstream"}, all_runs
        prepare, replay = runs["prepare_clickstream"], runs["replay_clickstream"]
        assert prepare.status == DagsterRunStatus.SUCCESS
        evaluations = instance.get_records_for_run(
            prepare.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION
        ).records
        assert len(evaluations) == int(checks.group(2))
        assert all(r.event_log_entry.dagster_event.event_specific_data.passed for r in evaluations)
        assert replay.status == DagsterRunStatus.SUCCESS
        assert prepare.run_id.startswith(checks.group(1))
        assert replay.run_id.startswith(summary.group(1))
        assert replay.tags.get("dagster/partition") == DEMO_DAY
        assert replay.tags.get("clickstream/day") == DEMO_DAY
        materialization = instance.get_latest_materialization_event(AssetKey("click_data"))
        assert materialization is not None and materialization.run_id == replay.run_id
        assert materialization.asset_materialization.partition == DEMO_DAY
        assert materialization.asset_materialization.metadata["messages"].value == messages


# --------------------------------------------------------------------------- never hangs, never a traceback

STOP_TIMEOUT_S = 30.0  # the deadline for Ctrl-C to take effect (it takes a few seconds here)


def demo_env(tmp_path, **settings: str) -> tuple[dict, Path]:
    """The demo's environment on a fresh instance in ``tmp_path``; ``settings`` on top."""
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    shutil.copy(PROJECT_DAGSTER_YAML, home / "dagster.yaml")
    csv_path = tmp_path / "clickstream.csv"
    if not csv_path.exists():
        write_log(csv_path, rows=3000, seed=5)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEMO_", "KAFKA_", "DAGSTER_"))}
    env.pop("CLICKSTREAM_STORAGE_DIR", None)
    env.update(DAGSTER_HOME=str(home), CLICKSTREAM_CSV=str(csv_path), PYTHONUNBUFFERED="1", **settings)
    return env, home


def run_demo(env: dict, timeout_s: float = DEMO_TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "demo.py")],
        cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout_s,
        check=False,
    )


def one_error_line(done: subprocess.CompletedProcess) -> str:
    shown = f"exit code {done.returncode}\n--- stdout ---\n{done.stdout}\n--- stderr ---\n{done.stderr}"
    assert done.returncode == 1, shown
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), shown
    return lines[0]


def test_a_port_in_use_is_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env, _ = demo_env(tmp_path, KAFKA_PORT=str(port), KAFKA_STATE_DIR=str(tmp_path / "kafka"))
        line = one_error_line(run_demo(env, timeout_s=120))
    assert f"could not start the local Kafka broker: port {port} on 127.0.0.1 is already in use" in line
    assert "KAFKA_PORT" in line


def test_no_java_is_one_line(tmp_path):
    env, _ = demo_env(tmp_path, KAFKA_STATE_DIR=str(tmp_path / "kafka"))
    env["PATH"] = str(Path(sys.executable).parent)  # the venv's tools, no java
    env.pop("JAVA_HOME", None)
    line = one_error_line(run_demo(env, timeout_s=120))
    assert "java not found" in line and "Java 17" in line


def test_a_busy_topic_fails_fast_naming_the_run_and_what_to_do(kafka_bootstrap_servers, tmp_path):
    from clickstream_dagster.definitions import defs

    env, home = demo_env(tmp_path, KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap_servers)
    tags = {"dagster/partition": "2012-03-04", "clickstream/topic": "click-data", "dagster/sensor_name": "replay_feed"}
    with DagsterInstance.from_config(str(home)) as instance:
        busy = instance.create_run_for_job(
            defs.resolve_job_def("replay_clickstream"), tags=tags, status=DagsterRunStatus.STARTED
        )
    done = run_demo(env, timeout_s=120)
    line = one_error_line(done)
    assert line.startswith(
        f"error: click-data is busy: run {busy.run_id[:8]} (replay_clickstream, 2012-03-04, STARTED, "
        "launched by replay_feed)."
    ), line
    assert "DEMO_WAIT=1 make demo" in line and f"/runs/{busy.run_id}" in line and "DEMO_TOPIC=" in line
    assert "Preparing" not in done.stdout
    with DagsterInstance.from_config(str(home)) as instance:
        assert [r.run_id for r in instance.get_runs()] == [busy.run_id]  # nothing else was started


def test_ctrl_c_stops_the_demo_and_its_replay_within_seconds(kafka_bootstrap_servers, tmp_path):
    from clickstream_dagster_tests.e2e.conftest import wait_for

    topic = f"e2e-demo-interrupt-{os.getpid()}-{tmp_path.name[-8:]}".replace("_", "-")
    # 5 messages a second: the day would take about 40 s.
    env, home = demo_env(tmp_path, KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap_servers, DEMO_RATE="5", DEMO_TOPIC=topic)
    out, err = tmp_path / "demo.out", tmp_path / "demo.err"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "scripts" / "demo.py")],
            cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, start_new_session=True,
        )
    try:
        # A progress line ("<count>/<total> ..."): the replay is sending.
        wait_for(lambda: re.search(r"click_data - \d+/\d+ ", err.read_text()), timeout_s=DEMO_TIMEOUT_S,
                 what="the replay to send", details=lambda: out.read_text() + err.read_text())
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
        try:
            code = proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the demo ignored Ctrl-C for {STOP_TIMEOUT_S:.0f} s:\n{out.read_text()}\n{err.read_text()}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    output, errors = out.read_text(), err.read_text()
    shown = f"exit code {code}\n--- stdout ---\n{output}\n--- stderr ---\n{errors}"
    assert code == 130, shown
    assert "Traceback" not in errors and "Stack Trace" not in errors, shown
    assert errors.strip().splitlines()[-1].startswith("Interrupted: the demo stopped"), shown

    # The replay stopped with the demo, and says how far it got: exactly what is in the topic.
    with DagsterInstance.from_config(str(home)) as instance:
        [replay] = instance.get_runs(filters=RunsFilter(job_name="replay_clickstream"))
        assert replay.status in (DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED), replay.status
        observation = instance.fetch_observations(AssetKey("click_data"), limit=1).records[0]
        assert observation.run_id == replay.run_id
        messages = observation.asset_observation.metadata["messages"].value
    assert 0 < messages == len(read_topic(kafka_bootstrap_servers, topic))  # what a read_committed consumer gets


def test_with_demo_wait_it_waits_visibly_then_replays(kafka_bootstrap_servers, tmp_path):
    from clickstream_dagster.definitions import defs
    from clickstream_dagster_tests.e2e.conftest import wait_for

    topic = f"e2e-demo-wait-{uuid.uuid4().hex[:8]}"
    env, home = demo_env(tmp_path, KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap_servers, DEMO_TOPIC=topic, DEMO_WAIT="1")
    with DagsterInstance.from_config(str(home)) as instance:
        busy = instance.create_run_for_job(
            defs.resolve_job_def("replay_clickstream"),
            tags={"dagster/partition": "2012-03-09", "clickstream/topic": topic},
            status=DagsterRunStatus.STARTED,
        )
    out, err = tmp_path / "demo.out", tmp_path / "demo.err"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "scripts" / "demo.py")],
            cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, start_new_session=True,
        )
    try:
        wait_for(lambda: f"  waiting for run {busy.run_id[:8]}" in out.read_text(), timeout_s=120,
                 what="the demo to say what it waits for", details=lambda: out.read_text() + err.read_text())
        assert "Preparing" not in out.read_text()
        with DagsterInstance.from_config(str(home)) as instance:  # the other replay ends
            instance.report_run_canceled(instance.get_run_by_id(busy.run_id))
        code = proc.wait(timeout=DEMO_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    output = out.read_text()
    assert code == 0, output + err.read_text()
    assert output.startswith(
        f"{topic} is busy: run {busy.run_id[:8]} (replay_clickstream, 2012-03-09, STARTED, launched by "
        "the launchpad or a backfill)."
    ), output
    assert f"  {topic} is free.\nPreparing" in output
    assert "Replaying 2012-03-01 into " + topic in output and "Done." in output
