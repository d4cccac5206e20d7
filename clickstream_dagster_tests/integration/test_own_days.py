"""Your own log, your own days: CLICKSTREAM_DAYS through the real CLI.

A 9-line log of 2026-11-01..03 (and one line on each side of it), prepared with
CLICKSTREAM_DAYS=2026-11-01..2026-11-03: three day files holding the nine lines, no day file
for any other day, and the only out_of_range rejects are the two lines outside the window.
"""

import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
HEADER = (
    "Unix Timestamp,Date and Time,Visitor ID,Session ID,IP Address,Country,State,City,Referrer URL,"
    "Product Page URL,Visitor Unique ID,29"
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
        str(Path(sys.executable).with_name("dagster")), "asset", "materialize",
        "-m", "clickstream_dagster.definitions",
        "--select", "clickstream_events,clickstream_rejects", "--partition-range", "2026-11-01...2026-11-03",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    days = {p.name: pl.read_parquet(p).height for p in (storage / "clickstream_events").iterdir()}
    assert days == {"2026-11-01.parquet": 3, "2026-11-02.parquet": 3, "2026-11-03.parquet": 3}
    rejects = pl.read_parquet(storage / "clickstream_rejects.parquet")
    assert rejects["reason"].to_list() == ["out_of_range", "out_of_range"]
