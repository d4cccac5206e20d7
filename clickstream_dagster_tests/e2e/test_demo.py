"""`make demo` after setup: scripts/demo.py prepares every day, replays one, reads a few back."""

import os
import re
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import polars as pl
import pytest
from dagster import AssetKey, DagsterInstance, DagsterRunStatus

from clickstream_dagster.generator import write_log
from clickstream_dagster_tests.e2e.conftest import DAYS, PROJECT_DAGSTER_YAML, REPO_ROOT

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
    for var in ("CLICKSTREAM_STORAGE_DIR", "DEMO_RATE"):
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
    checks = re.search(r"^  run (\w{8}): checks (.+)$", output, re.M)
    assert checks, shown
    results = dict(item.split("=") for item in checks.group(2).split(", "))
    assert set(results) == {"no_null_user_id", "timestamps_inside_day", "no_duplicate_page_views",
                            "every_line_accounted_for"}, results
    assert set(results.values()) == {"ok"}, results
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
    assert "Done." in output, shown

    # The whole day was replayed: as many messages as its prepared Parquet has rows
    # (in the instance's storage directory: CLICKSTREAM_STORAGE_DIR was unset).
    parquet = home / "storage" / "clickstream_events" / f"{DEMO_DAY}.parquet"
    assert parquet.is_file(), sorted(p.relative_to(home).as_posix() for p in home.rglob("*.parquet"))
    assert messages == pl.scan_parquet(parquet).select(pl.len()).collect().item() > 0

    # And the instance `make dev` would show holds both runs, successful.
    with DagsterInstance.from_config(str(home)) as instance:
        all_runs = instance.get_runs()
        runs = {run.job_name: run for run in all_runs}
        assert len(all_runs) == 2 and set(runs) == {"prepare_clickstream", "replay_clickstream"}, all_runs
        prepare, replay = runs["prepare_clickstream"], runs["replay_clickstream"]
        assert prepare.status == DagsterRunStatus.SUCCESS
        assert replay.status == DagsterRunStatus.SUCCESS
        assert prepare.run_id.startswith(checks.group(1))
        assert replay.run_id.startswith(summary.group(1))
        assert replay.tags.get("dagster/partition") == DEMO_DAY
        assert replay.tags.get("clickstream/day") == DEMO_DAY
        materialization = instance.get_latest_materialization_event(AssetKey("click_data"))
        assert materialization is not None and materialization.run_id == replay.run_id
        assert materialization.asset_materialization.partition == DEMO_DAY
        assert materialization.asset_materialization.metadata["messages"].value == messages
