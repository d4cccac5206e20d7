"""Your own log, your own days: CLICKSTREAM_DAYS through the real CLI.

A 9-line log of 2026-11-01..03 (and one line on each side of it), prepared with
CLICKSTREAM_DAYS=2026-11-01..2026-11-03: three day files holding the nine lines, no day file
for any other day, and the only out_of_range rejects are the two lines outside the window.
A day outside the window is refused by `dagster asset materialize` with one line naming the
window; `dagster job launch` cannot be refused at launch (no project code runs there), so the
run fails at its first step with that line.
"""

import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus
from dagster._core.instance.ref import InstanceRef

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
HEADER = (
    "Unix Timestamp,Date and Time,Visitor ID,Session ID,IP Address,Country,State,City,Referrer URL,"
    "Product Page URL,Visitor Unique ID,29"
)


DAGSTER = str(Path(sys.executable).with_name("dagster"))
REFUSED = (
    "2013-01-01 is not one of the days of this deployment: CLICKSTREAM_DAYS=2012-03-01..2012-03-15 "
    "(set CLICKSTREAM_DAYS to the days of your log)"
)


def _line(moment: datetime, n: int) -> str:
    return (
        f"{int(moment.timestamp())},{moment:%Y-%m-%d %H:%M:%S},48287025845113603{n:02d},40105347208053237{n:02d},"
        f"72.177.152.{n},usa,tx,san antonio,http://mail.yahoo.com/,http://www.acme.com/SH5587637/VD551786{n:02d},"
        f"{{D0F159FD-E0CB-11D2-9B39-00A0C9862B{n:02d}}},Mozilla/5.0"
    )


def test_a_log_of_other_days_prepares_into_exactly_those_days(tmp_path):
    inside = [datetime(2026, 11, day, hour, 7, 30, tzinfo=timezone.utc) for day in (1, 2, 3) for hour in (0, 11, 23)]
    outside = [datetime(2026, 10, 31, 23, 59, 59, tzinfo=timezone.utc), datetime(2026, 11, 4, tzinfo=timezone.utc)]
    log, storage, home = tmp_path / "own.csv", tmp_path / "days", tmp_path / "dagster_home"
    log.write_text("\n".join([HEADER, *(_line(m, n) for n, m in enumerate(inside + outside))]) + "\n")
    home.mkdir()
    env = os.environ | {
        "DAGSTER_HOME": str(home),
        "CLICKSTREAM_CSV": str(log),
        "CLICKSTREAM_STORAGE_DIR": str(storage),
        "CLICKSTREAM_DAYS": "2026-11-01..2026-11-03",
    }
    command = [
        DAGSTER, "asset", "materialize",
        "-m", "clickstream_dagster.definitions",
        "--select", "clickstream_events,clickstream_rejects", "--partition-range", "2026-11-01...2026-11-03",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    days = {p.name: pl.read_parquet(p).height for p in (storage / "clickstream_events").iterdir()}
    assert days == {"2026-11-01.parquet": 3, "2026-11-02.parquet": 3, "2026-11-03.parquet": 3}
    rejects = pl.read_parquet(storage / "clickstream_rejects.parquet")
    assert rejects["reason"].to_list() == ["out_of_range", "out_of_range"]


@pytest.fixture
def sample_days_home(tmp_path):
    """A DAGSTER_HOME whose runs launch at once (no daemon), and the sample's days."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(
        "run_coordinator:\n  module: dagster._core.run_coordinator\n  class: DefaultRunCoordinator\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CLICKSTREAM_DAYS"} | {"DAGSTER_HOME": str(home)}
    return home, env


def test_materialize_refuses_a_day_outside_the_window_in_one_line(sample_days_home):
    _, env = sample_days_home
    command = [DAGSTER, "asset", "materialize", "-m", "clickstream_dagster.definitions", "--select", "click_data"]
    done = subprocess.run([*command, "--partition", "2013-01-01"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == f"Error: {REFUSED}"
    assert "Traceback" not in done.stderr


def test_a_launched_run_of_a_day_outside_the_window_fails_at_its_first_step_in_one_line(sample_days_home):
    home, env = sample_days_home
    command = [
        DAGSTER, "job", "launch", "-m", "clickstream_dagster.definitions", "-j", "replay_clickstream",
        "--tags", '{"dagster/partition": "2013-01-01"}',
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    instance = DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
    deadline = time.monotonic() + 300
    while (run := instance.get_runs(limit=1)[0]).status not in (DagsterRunStatus.FAILURE, DagsterRunStatus.SUCCESS):
        assert time.monotonic() < deadline, f"run {run.run_id} still {run.status}"
        time.sleep(1)
    assert run.status == DagsterRunStatus.FAILURE
    failures = [
        event.dagster_event
        for event in instance.all_logs(run.run_id, of_type=DagsterEventType.STEP_FAILURE)
    ]
    assert [failure.step_key for failure in failures] == ["click_data"]
    assert failures[0].step_failure_data.error.message.strip() == f"clickstream_dagster.partitions.DayOutsideWindow: {REFUSED}"
