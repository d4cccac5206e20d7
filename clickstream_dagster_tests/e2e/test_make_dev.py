"""`make demo`, then `make dev`, with a non-default KAFKA_PORT and DAGSTER_PORT: the UI answers on
that port, the days the demo prepared are not prepared again, and the code location replays into
the broker on that port.

The module's ``dagster_dev`` (overriding conftest's) runs scripts/demo.py (which starts the broker)
and then the Makefile's target itself, in its own process group, with a temporary DAGSTER_HOME and
broker state dir; the broker (its own session) is stopped afterwards with scripts/local_kafka.py.
"""

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator

import polars as pl
import pytest

from clickstream_dagster.generator import write_log
from clickstream_dagster_tests.e2e.conftest import (
    LOG_ROWS,
    LOG_SEED,
    PROJECT_DAGSTER_YAML,
    REPO_ROOT,
    RESERVED_PORTS,
    RUN_TIMEOUT_S,
    DagsterDev,
    DagsterGraphQL,
    _reset_signals,
    _stop_or_raise,
    read_topic,
    wait_for,
    wait_until_ready,
)
from clickstream_dagster_tests.kafka_fixtures import _classpath_cache_dir

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def dagster_dev(local_kafka, tmp_path_factory) -> Iterator[DagsterDev]:
    root = tmp_path_factory.mktemp("make-dev")
    home, state_dir, storage_dir = root / "dagster_home", root / "kafka", root / "parquet"
    home.mkdir()
    shutil.copy(PROJECT_DAGSTER_YAML, home / "dagster.yaml")
    csv_path = root / "clickstream.csv"
    summary = write_log(csv_path, rows=LOG_ROWS, seed=LOG_SEED).as_dict()
    kafka_port = local_kafka.free_port(exclude=RESERVED_PORTS)
    dagster_port = local_kafka.free_port(exclude=(*RESERVED_PORTS, kafka_port))
    # Nothing from the developer's shell or an outer `make test` (MAKEFLAGS carries its variables).
    skipped = ("KAFKA_", "DAGSTER_", "REPLAY_", "DEMO_", "MAKE", "MFLAGS")
    env = {k: v for k, v in os.environ.items() if not k.startswith(skipped)}
    env.update(
        DAGSTER_HOME=str(home),
        CLICKSTREAM_CSV=str(csv_path),
        CLICKSTREAM_STORAGE_DIR=str(storage_dir),
        KAFKA_CLASSPATH_CACHE_DIR=str(_classpath_cache_dir()),  # no Maven call: the jars are resolved
        PYTHONUNBUFFERED="1",
    )
    demo = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "demo.py")],
        cwd=REPO_ROOT, env={**env, "KAFKA_PORT": str(kafka_port), "KAFKA_STATE_DIR": str(state_dir)},
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600, check=False,
    )
    if demo.returncode != 0:
        local_kafka.stop_broker(state_dir)
        pytest.fail(f"the demo failed first:\n{demo.stdout}\n{demo.stderr}", pytrace=False)
    assert f"Done. `KAFKA_PORT={kafka_port} make dev` opens the Dagster UI" in demo.stdout, demo.stdout
    log_path = root / "make-dev.log"
    command = ["make", "--no-print-directory", "dev",
               f"KAFKA_PORT={kafka_port}", f"DAGSTER_PORT={dagster_port}", f"KAFKA_STATE_DIR={state_dir}"]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_reset_signals)  # noqa: PLW1509
    dev = DagsterDev(proc, dagster_port, home, log_path, csv_path, storage_dir, f"127.0.0.1:{kafka_port}", summary)
    try:
        try:
            wait_until_ready(dev, DagsterGraphQL(dagster_port, timeout_s=10))
        except RuntimeError as error:
            pytest.fail(str(error), pytrace=False)
        dev.remember_processes()
        yield dev
    finally:
        try:
            _stop_or_raise(dev)
        finally:
            local_kafka.stop_broker(state_dir)


def test_the_ui_is_on_dagster_port_and_says_so(dagster_dev):
    assert f"Dagster UI: http://127.0.0.1:{dagster_dev.port}" in dagster_dev.log_path.read_text()


def test_the_days_the_demo_prepared_are_not_prepared_again(dagster_dev, gql):
    def first_tick():
        ticks = (gql.sensor_ticks()["sensorState"] or {}).get("ticks") or []
        first = ticks[-1] if ticks else None  # the oldest of the last few: the first evaluation
        return first if first and first["status"] != "STARTED" else None  # STARTED: still being evaluated

    tick = wait_for(first_tick, timeout_s=RUN_TIMEOUT_S, what="the log sensor's first tick", details=gql.details)
    assert tick["status"] == "SKIPPED" and "already prepared from clickstream.csv" in tick["skipReason"], tick
    assert not gql.runs(job_name="prepare_clickstream", tags={"dagster/sensor_name": "clickstream_log_changed"})


def test_replays_go_to_the_broker_make_dev_started(dagster_dev, gql):
    topic, day, limit = f"e2e-make-dev-{uuid.uuid4().hex[:8]}", "2012-03-02", 20
    run_id = gql.submit_replay(day, {"topic": topic, "pacing": "max", "limit": limit})
    run = gql.wait_for_run(run_id)
    assert run["status"] == "SUCCESS", gql.describe_run(run_id)
    [materialization] = [m for m in gql.materializations(run_id) if m["asset"] == "click_data"]
    assert materialization["metadata"]["bootstrap_servers"] == dagster_dev.bootstrap_servers
    # And they are there, on that port.
    rows = pl.scan_parquet(dagster_dev.storage_dir / "clickstream_events" / f"{day}.parquet").select(pl.len())
    assert len(read_topic(dagster_dev.bootstrap_servers, topic)) == min(limit, rows.collect().item())
