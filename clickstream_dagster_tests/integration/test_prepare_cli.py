"""The README's command-line prepare, for real; and a kill -9 in its middle.

A prepare killed with kill -9 leaves every prepared day readable as it was. The
prepare is the real CLI (`dagster asset materialize ... --partition-range`) on a
temporary DAGSTER_HOME, over a generated log big enough to take a while; it is killed
(its whole process group: the CLI and its step process) once it is writing the day
files. A reader polls the days all along, as a replay would.
"""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import polars as pl
import pytest
from dagster import materialize

from clickstream_dagster.assets import prepare
from clickstream_dagster.generator import write_log
from clickstream_dagster.partitions import DATASET_WINDOW
from clickstream_dagster.resources.log_file import ClickstreamLogFile
from clickstream_dagster.resources.parquet import DailyParquetIOManager

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DAYS = DATASET_WINDOW.days()
ROWS = 1_000_000  # about 300 MB: the day files take a while to write


def _cli(tmp_path: Path, log: Path, storage: Path) -> tuple[list[str], dict[str, str]]:
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    env = os.environ | {
        "DAGSTER_HOME": str(home),
        "CLICKSTREAM_CSV": str(log),
        "CLICKSTREAM_STORAGE_DIR": str(storage),
    }
    command = [
        str(Path(sys.executable).with_name("dagster")), "asset", "materialize",
        "-m", "clickstream_dagster.definitions",
        "--select", "clickstream_events,clickstream_rejects",
        "--partition-range", f"{DAYS[0]}...{DAYS[-1]}",
    ]  # fmt: skip
    return command, env


def test_the_cli_prepares_every_day_and_the_rejects_in_one_run(tmp_path):
    log = tmp_path / "clickstream.csv"
    summary = write_log(log, rows=3000, seed=5)
    storage = tmp_path / "storage"
    command, env = _cli(tmp_path, log, storage)
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    kept = {p.stem: pl.read_parquet(p).height for p in (storage / "clickstream_events").glob("*.parquet")}
    assert kept == summary.rows_per_day
    rejects = pl.read_parquet(storage / "clickstream_rejects.parquet")
    assert dict(rejects.group_by("reason").len().iter_rows()) == {k: v for k, v in summary.reject_reasons.items() if v}
    # Kept and rejected counts by reason, at info level, from one scan of the log.
    assert f"{summary.rows:,} lines: {summary.kept_rows_expected:,} kept, {rejects.height:,} rejected (" in done.stderr
    assert "INFO - __ASSET_JOB" in done.stderr and "rejects taken from" in done.stderr


def _day_files(events_dir: Path) -> dict[str, tuple[int, int]]:
    return {p.stem: (p.stat().st_ino, p.stat().st_mtime_ns) for p in events_dir.glob("*.parquet")}


def test_kill_9_mid_prepare_leaves_every_day_as_it_was(tmp_path):
    log = tmp_path / "clickstream.csv"
    write_log(log, rows=ROWS, seed=11)
    storage = tmp_path / "storage"
    events_dir = storage / "clickstream_events"

    # The previous prepare, complete.
    result = materialize(
        [prepare.clickstream_events],
        resources={
            "clickstream_log": ClickstreamLogFile(path=str(log)),
            "parquet_io_manager": DailyParquetIOManager(base_dir=str(storage)),
        },
        tags={"dagster/asset_partition_range_start": DAYS[0], "dagster/asset_partition_range_end": DAYS[-1]},
    )
    assert result.success
    before = {day: pl.read_parquet(events_dir / f"{day}.parquet") for day in DAYS}
    files_before = _day_files(events_dir)

    # A reader, as a replay reading a day while the sensor starts a prepare.
    stop, reads, read_errors = threading.Event(), [0], []

    def read_days() -> None:
        while not stop.is_set():
            for day in DAYS:
                try:
                    if not pl.read_parquet(events_dir / f"{day}.parquet").equals(before[day]):
                        read_errors.append(f"{day}: different content")
                except Exception as error:  # noqa: BLE001 - any failure to read is the finding
                    read_errors.append(f"{day}: {error!r}"[:300])
                reads[0] += 1

    reader = threading.Thread(target=read_days, daemon=True)
    reader.start()

    command, env = _cli(tmp_path, log, storage)
    cli = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        # Mid-way: a day file is being written (its temporary exists) or already replaced.
        deadline = time.monotonic() + 600
        while cli.poll() is None and time.monotonic() < deadline:
            writing = any(events_dir.glob(".*.tmp"))
            if writing or _day_files(events_dir) != files_before:
                break
            time.sleep(0.001)
        assert cli.poll() is None, "the prepare ended before it was caught writing: make the log bigger"
        os.killpg(cli.pid, signal.SIGKILL)
        cli.wait(timeout=60)
        replaced = sum(files_before[d] != v for d, v in _day_files(events_dir).items())
    finally:
        if cli.poll() is None:
            os.killpg(cli.pid, signal.SIGKILL)
            cli.wait(timeout=60)
        stop.set()
        reader.join(timeout=120)
        cli.stderr.close()

    assert cli.returncode == -signal.SIGKILL
    assert replaced < len(DAYS), "killed mid-way: not every day was written again"
    # Every day reads, and is what it was (the same log: a replaced day equals it too).
    for day in DAYS:
        assert pl.read_parquet(events_dir / f"{day}.parquet").equals(before[day]), day
    assert reads[0] > 0 and not read_errors, (reads[0], read_errors[:5])
