"""A deployment's storage, for real: the instance in Postgres (deploy/dagster.yaml) and the
prepared days in S3 (CLICKSTREAM_STORAGE_DIR=s3://...), through the README's command line.

Each command is its own process, as on a deployment where the prepare and the replay run in
different pods: the prepare writes every day to the bucket, the replay (another process)
reads its day from there and publishes it; both runs are recorded in Postgres. The servers
are real: PostgreSQL started by the session (postgres_fixtures.py), s3proxy
(s3_fixtures.py), a KRaft broker (kafka_fixtures.py). Credentials reach the processes only
through the standard variables (AWS_*, DAGSTER_PG_*) and appear in no log.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest

from clickstream_dagster.generator import write_log
from clickstream_dagster.partitions import DATASET_WINDOW
from clickstream_dagster_tests.kafka_fixtures import REPO_ROOT
from clickstream_dagster_tests.postgres_fixtures import PostgresServer
from clickstream_dagster_tests.s3_fixtures import S3Server

pytestmark = pytest.mark.integration

DEPLOY_YAML = REPO_ROOT / "deploy" / "dagster.yaml"
DAYS = DATASET_WINDOW.days()
REPLAY_DAY = "2012-03-05"
CLI_TIMEOUT_S = 600


@dataclass
class Deployment:
    home: Path
    env: dict[str, str]
    db_name: str
    storage_url: str  # s3://bucket/prefix
    postgres: PostgresServer
    s3: S3Server
    log_summary: object  # the generator's summary of the log (rows per day)

    def cli(self, *args: str) -> list[str]:
        dagster = Path(sys.executable).with_name("dagster")
        return [str(dagster), "asset", "materialize", "-m", "clickstream_dagster.definitions", *args]

    def prepare_command(self) -> list[str]:
        return self.cli(
            "--select", "clickstream_events", "--partition-range", f"{DAYS[0]}...{DAYS[-1]}"
        )

    def run(self, command: list[str]) -> subprocess.CompletedProcess:
        done = subprocess.run(command, cwd=REPO_ROOT, env=self.env, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
        assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stderr[-4000:]}"
        return done

    def objects(self, asset: str = "clickstream_events") -> dict[str, dict]:
        """The day objects in the bucket: ``{day: info}`` (ETag, LastModified, size)."""
        fs = self.s3.filesystem()
        prefix = f"{self.storage_url.removeprefix('s3://')}/{asset}"
        try:
            infos = fs.ls(prefix, detail=True, refresh=True)
        except FileNotFoundError:
            return {}
        return {Path(i["name"]).stem: i for i in infos if i["name"].endswith(".parquet")}

    def read_day(self, day: str) -> pl.DataFrame:
        options = {
            "aws_access_key_id": self.s3.access_key, "aws_secret_access_key": self.s3.secret_key,
            "aws_endpoint_url": self.s3.endpoint, "aws_region": "us-east-1", "aws_allow_http": "true",
        }  # fmt: skip
        return pl.read_parquet(f"{self.storage_url}/clickstream_events/{day}.parquet", storage_options=options)

    def runs(self) -> list[tuple[str, str]]:
        """(job name, status) of every run in Postgres, oldest first."""
        return self.postgres.query(self.db_name, "SELECT pipeline_name, status FROM runs ORDER BY id")

    def materialized(self, asset: str) -> set[str]:
        """Partitions of ``asset`` with a materialization event in Postgres."""
        rows = self.postgres.query(
            self.db_name,
            "SELECT partition FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION' AND asset_key = %s",
            json.dumps([asset]),  # AssetKey.to_string()
        )
        return {partition for (partition,) in rows}


@pytest.fixture
def deployment(tmp_path, postgres_server, postgres_env, s3_server, s3_env, kafka_bootstrap_servers) -> Deployment:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(DEPLOY_YAML, home / "dagster.yaml")
    log = tmp_path / "clickstream.csv"
    summary = write_log(log, rows=3000, seed=13)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DAGSTER_PG_"))}
    env |= postgres_env | s3_env
    env |= {"DAGSTER_HOME": str(home), "CLICKSTREAM_CSV": str(log), "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap_servers}
    return Deployment(home, env, postgres_env["DAGSTER_PG_DB"], s3_env["CLICKSTREAM_STORAGE_DIR"], postgres_server, s3_server, summary)


def _topic_rows(bootstrap_servers: str, topic: str, expected: int) -> int:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic, bootstrap_servers=bootstrap_servers, auto_offset_reset="earliest", enable_auto_commit=False,
        isolation_level="read_committed", consumer_timeout_ms=10_000, group_id=None,
    )  # fmt: skip
    try:
        seen = 0
        for _ in consumer:
            seen += 1
            if seen >= expected:
                break
        return seen
    finally:
        consumer.close()


def test_prepare_writes_to_s3_a_replay_in_another_process_reads_it_and_postgres_records_both(
    deployment, kafka_topic, kafka_bootstrap_servers
):
    prepare = deployment.run(deployment.prepare_command())

    objects = deployment.objects()
    assert sorted(objects) == DAYS, f"days in {deployment.storage_url}: {sorted(objects)}"
    rows = {day: deployment.read_day(day).height for day in DAYS}
    assert rows == deployment.log_summary.rows_per_day

    config = {"ops": {"click_data": {"config": {"topic": kafka_topic, "pacing": "max"}}}}
    replay = deployment.run(
        deployment.cli("--select", "click_data", "--partition", REPLAY_DAY, "--config-json", json.dumps(config))
    )
    assert _topic_rows(kafka_bootstrap_servers, kafka_topic, rows[REPLAY_DAY]) == rows[REPLAY_DAY]

    assert [status for _, status in deployment.runs()] == ["SUCCESS", "SUCCESS"]
    assert deployment.materialized("clickstream_events") == set(DAYS)
    assert deployment.materialized("click_data") == {REPLAY_DAY}

    # Neither secret appears in what the commands printed, the run records or the compute logs.
    for secret in (deployment.s3.secret_key, deployment.postgres.password):
        for name, text in (("prepare output", prepare.stdout + prepare.stderr), ("replay output", replay.stdout + replay.stderr)):
            assert secret not in text, f"a secret in the {name}"
        for table, column in (("event_logs", "event"), ("runs", "run_body")):
            (count,) = deployment.postgres.query(
                deployment.db_name, f"SELECT count(*) FROM {table} WHERE {column} LIKE %s", f"%{secret}%"
            )[0]
            assert count == 0, f"a secret in Postgres {table}.{column}"
        logged = [p for p in deployment.home.rglob("*") if p.is_file() and secret in p.read_text(errors="replace")]
        assert not logged, f"a secret in {logged}"


def _stamps(directory: Path) -> dict[str, int]:
    """Name -> mtime of what is in the directory now. s3proxy writes an object under a temporary
    name and renames it: one listed a moment ago may be gone when it is looked at."""
    found = {}
    for path in directory.iterdir():
        try:
            found[path.name] = path.stat().st_mtime_ns
        except FileNotFoundError:
            pass
    return found


def test_a_killed_prepare_leaves_the_previous_objects_intact(deployment, tmp_path):
    deployment.run(deployment.prepare_command())
    before = deployment.objects()
    rows_before = deployment.log_summary.rows_per_day

    # A new, bigger log: its day objects differ from the previous ones and take a while to write.
    new_log = tmp_path / "clickstream-new.csv"
    new_summary = write_log(new_log, rows=400_000, seed=14)
    env = deployment.env | {"CLICKSTREAM_CSV": str(new_log)}
    cli = subprocess.Popen(
        deployment.prepare_command(), cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        # Watched on the server's disk (s3proxy's filesystem backend), which is quicker to poll
        # than a listing: the days land about 50 ms apart.
        on_disk = deployment.s3.base_dir / deployment.storage_url.removeprefix("s3://") / "clickstream_events"
        stamps = _stamps(on_disk)
        deadline = time.monotonic() + CLI_TIMEOUT_S
        while cli.poll() is None and time.monotonic() < deadline:
            if _stamps(on_disk) != stamps:
                break  # the first new day object is in: kill the prepare mid-way
            time.sleep(0.001)
        assert cli.poll() is None, "the prepare ended before it was caught writing: make the log bigger"
        os.killpg(cli.pid, signal.SIGKILL)  # the CLI and its step process
        cli.wait(timeout=60)
    finally:
        if cli.poll() is None:
            os.killpg(cli.pid, signal.SIGKILL)
            cli.wait(timeout=60)

    after = deployment.objects()
    assert sorted(after) == DAYS
    replaced = [d for d in DAYS if after[d]["ETag"] != before[d]["ETag"]]
    assert 0 < len(replaced) < len(DAYS), f"killed mid-way, yet replaced {replaced}"
    # Every day reads whole: the old object, or the new one complete, never a part.
    for day in DAYS:
        expected = new_summary.rows_per_day[day] if day in replaced else rows_before[day]
        assert deployment.read_day(day).height == expected, day
