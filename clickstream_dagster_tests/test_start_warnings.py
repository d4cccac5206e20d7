"""Starting the project prints no Beta/Preview warning of its own making (deliverable 6).

The real CLI loads the definitions in a fresh process with Python's default warning filters,
as `dagster dev` and `dagster asset materialize` do on every start.
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_cli_loads_the_definitions_without_beta_or_preview_warnings(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"} | {"DAGSTER_HOME": str(tmp_path)}
    done = subprocess.run(
        [str(Path(sys.executable).with_name("dagster")), "asset", "list", "-m", "clickstream_dagster.definitions"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "clickstream_events" in done.stdout
    warned = [line for line in done.stderr.splitlines() if "BetaWarning" in line or "PreviewWarning" in line]
    assert not warned, warned
