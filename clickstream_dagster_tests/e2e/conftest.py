"""End-to-end fixtures: the real ``dagster dev`` (dagster-webserver + dagster-daemon), driven over GraphQL.

* ``dagster_dev`` (module, once per instance): ``dagster dev -w workspace.yaml -h 127.0.0.1 -p <free port>``
  run from the repo root with a temporary DAGSTER_HOME holding either the project's
  ``.dagster_home/dagster.yaml`` (SQLite, ``[sqlite]``) or the deployment's ``deploy/dagster.yaml``
  on a fresh database of the session's PostgreSQL server (``[postgres]``),
  a small generated log (CLICKSTREAM_CSV), a temporary Parquet dir (CLICKSTREAM_STORAGE_DIR) and
  the test broker (KAFKA_BOOTSTRAP_SERVERS). Ready when GraphQL reports the code location LOADED
  and the daemons healthy; stopped with its whole process group at the end of the module.
* ``gql`` (module): a :class:`DagsterGraphQL` helper on that webserver.
* ``prepared_run`` (module): the prepare run the ``clickstream_log_changed`` sensor launches on its
  first evaluation, waited for until it ends.
* ``idle_replays`` (function): no replay run in progress when a test starts (leftovers of a failed
  test are terminated).
* ``replay_topic`` (function): a unique topic name, deleted afterwards.

Every wait polls a condition with a bounded deadline (no bare sleeps, no timed assertions); the
deadlines are generous because the machine is small and shared. ``E2E_START_TIMEOUT_S`` and
``E2E_RUN_TIMEOUT_S`` override them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PROJECT_DAGSTER_YAML = REPO_ROOT / ".dagster_home" / "dagster.yaml"
DEPLOY_DAGSTER_YAML = REPO_ROOT / "deploy" / "dagster.yaml"
# Every e2e test runs on both: the instance of `make dev` and the one a deployment uses.
INSTANCES = ("sqlite", "postgres")
LOCATION_NAME = "clickstream_dagster"
REPOSITORY_NAME = "__repository__"
PREPARE_JOB, REPLAY_JOB = "prepare_clickstream", "replay_clickstream"
SENSOR_NAME, SCHEDULE_NAME = "clickstream_log_changed", "replay_cycle"
DAYS = [f"2012-03-{d:02d}" for d in range(1, 16)]
TOPIC_TAG, PACING_TAG, DAY_TAG = "clickstream/topic", "clickstream/pacing", "clickstream/day"
LOG_ROWS, LOG_SEED = 3000, 7
# Never hand these to dagster dev: the UI's default and the usual local broker ports.
RESERVED_PORTS = (3000, 9092, 9093)

TERMINAL = frozenset({"SUCCESS", "FAILURE", "CANCELED"})
IN_PROGRESS = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING")
# The daemons the tests rely on: sensor (prepare), queue (every launch), backfill, schedule.
REQUIRED_DAEMONS = ("SENSOR", "QUEUED_RUN_COORDINATOR", "BACKFILL", "SCHEDULER")

START_TIMEOUT_S = float(os.environ.get("E2E_START_TIMEOUT_S") or 180)
RUN_TIMEOUT_S = float(os.environ.get("E2E_RUN_TIMEOUT_S") or 240)
STOP_TIMEOUT_S = 45.0

T = TypeVar("T")


# --------------------------------------------------------------------------- polling


class WaitTimeout(AssertionError):
    """A polled condition did not hold before its deadline."""


def wait_for(
    condition: Callable[[], T],
    *,
    timeout_s: float,
    what: str,
    interval_s: float = 0.5,
    details: Callable[[], str] | None = None,
) -> T:
    """Poll ``condition`` until it returns something truthy (returned) or ``timeout_s`` passes.

    Exceptions from ``condition`` propagate. On timeout, the last value seen and ``details()``
    (e.g. the server's log tail) go into the error.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            extra = ""
            if details is not None:
                with contextlib.suppress(Exception):
                    extra = "\n" + details()
            raise WaitTimeout(f"timed out after {timeout_s:.0f} s waiting for {what} (last: {value!r}){extra}")
        time.sleep(interval_s)


# --------------------------------------------------------------------------- GraphQL

_METADATA_FRAGMENT = """
fragment MD on MetadataEntry {
  __typename label
  ... on IntMetadataEntry { intValue intRepr }
  ... on FloatMetadataEntry { floatValue }
  ... on TextMetadataEntry { text }
  ... on JsonMetadataEntry { jsonString }
  ... on BoolMetadataEntry { boolValue }
  ... on PathMetadataEntry { path }
  ... on TableMetadataEntry { table { records } }
}
"""

_RUN_FIELDS = "runId jobName status creationTime startTime endTime updateTime tags { key value }"

_RUN_QUERY = """
query Run($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { %s }
    ... on RunNotFoundError { message }
    ... on PythonError { message }
  }
}
""" % _RUN_FIELDS

_RUNS_QUERY = """
query Runs($filter: RunsFilter, $limit: Int) {
  runsOrError(filter: $filter, limit: $limit) {
    __typename
    ... on Runs { results { %s } }
    ... on InvalidPipelineRunsFilterError { message }
    ... on PythonError { message }
  }
}
""" % _RUN_FIELDS

_EVENTS_QUERY = (
    """
query RunEvents($runId: ID!, $cursor: String) {
  runOrError(runId: $runId) {
    __typename
    ... on Run {
      eventConnection(afterCursor: $cursor) {
        cursor hasMore
        events {
          __typename
          ... on MessageEvent { message level timestamp stepKey }
          ... on MaterializationEvent { partition assetKey { path } metadataEntries { ...MD } }
          ... on ObservationEvent { partition assetKey { path } metadataEntries { ...MD } }
          ... on AssetCheckEvaluationEvent {
            evaluation { checkName success partition assetKey { path } metadataEntries { ...MD } }
          }
        }
      }
    }
    ... on PythonError { message }
  }
}
"""
    + _METADATA_FRAGMENT
)

_ASSET_MATERIALIZATIONS_QUERY = (
    """
query AssetMaterializations($path: [String!]!, $limit: Int) {
  assetOrError(assetKey: {path: $path}) {
    __typename
    ... on Asset {
      assetMaterializations(limit: $limit) { runId partition timestamp metadataEntries { ...MD } }
    }
  }
}
"""
    + _METADATA_FRAGMENT
)

_PARTITION_STATS_QUERY = """
query PartitionStats($path: [String!]!) {
  assetNodeOrError(assetKey: {path: $path}) {
    __typename
    ... on AssetNode { partitionStats { numMaterialized numPartitions numFailed numMaterializing } }
  }
}
"""

_WORKSPACE_QUERY = """
query Workspace {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name loadStatus
        locationOrLoadError { __typename ... on PythonError { message stack } }
      }
    }
    ... on PythonError { message }
  }
}
"""

_DAEMON_HEALTH_QUERY = """
query DaemonHealth {
  instance { daemonHealth { allDaemonStatuses { daemonType required healthy lastHeartbeatTime } } }
}
"""

_TERMINATE_MUTATION = """
mutation Terminate($runId: String!) {
  terminateRun(runId: $runId) {
    __typename
    ... on TerminateRunSuccess { run { runId status } }
    ... on TerminateRunFailure { message }
    ... on RunNotFoundError { message }
    ... on PythonError { message stack }
  }
}
"""

_BACKFILL_MUTATION = """
mutation Backfill($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId launchedRunIds }
    ... on PartitionSetNotFoundError { message }
    ... on PartitionKeysNotFoundError { message }
    ... on InvalidSubsetError { message }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on PythonError { message stack }
  }
}
"""

_BACKFILL_QUERY = """
query Backfill($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { id status partitionNames runs { %s } }
    ... on BackfillNotFoundError { message }
    ... on PythonError { message }
  }
}
""" % _RUN_FIELDS

_SCHEDULE_DRY_RUN_MUTATION = """
mutation ScheduleDryRun($selector: ScheduleSelector!, $timestamp: Float) {
  scheduleDryRun(selectorData: $selector, timestamp: $timestamp) {
    __typename
    ... on DryRunInstigationTick {
      timestamp
      evaluationResult {
        skipReason
        runRequests { runKey jobName runConfigYaml tags { key value } }
        error { message stack }
      }
    }
    ... on ScheduleNotFoundError { message }
    ... on PythonError { message stack }
  }
}
"""

_SENSOR_TICKS_QUERY = """
query SensorTicks($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor {
      sensorState { status ticks(limit: 5) { status timestamp skipReason runIds error { message } } }
    }
  }
}
"""


def metadata_values(entries: list[dict]) -> dict[str, Any]:
    """GraphQL metadata entries as ``{label: python value}`` (tables: their records as dicts)."""
    out: dict[str, Any] = {}
    for entry in entries:
        kind = entry["__typename"]
        if kind == "IntMetadataEntry":
            value: Any = int(entry["intRepr"])
        elif kind == "FloatMetadataEntry":
            value = entry["floatValue"]
        elif kind == "TextMetadataEntry":
            value = entry["text"]
        elif kind == "JsonMetadataEntry":
            value = json.loads(entry["jsonString"])
        elif kind == "BoolMetadataEntry":
            value = entry["boolValue"]
        elif kind == "PathMetadataEntry":
            value = entry["path"]
        elif kind == "TableMetadataEntry":
            value = [json.loads(r) for r in entry["table"]["records"]]
        else:
            value = kind  # a kind the tests do not read
        out[entry["label"]] = value
    return out


def run_tags(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["tags"]}


@contextlib.contextmanager
def _quiet_gql() -> Iterator[None]:
    # dagster_graphql 1.13 still calls gql's deprecated execute(variable_values=...) form.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using variable_values", category=DeprecationWarning)
        yield


class DagsterGraphQL:
    """The webserver's GraphQL API: ``DagsterGraphQLClient`` for launches, raw queries for the rest."""

    def __init__(self, port: int, details: Callable[[], str] = lambda: "", timeout_s: int = 60):
        from dagster_graphql import DagsterGraphQLClient

        self.port = port
        self.client = DagsterGraphQLClient("127.0.0.1", port_number=port, timeout=timeout_s)
        self._details = details  # appended to wait errors (the server's log tail)

    # -- plumbing
    def execute(self, query: str, **variables: Any) -> dict:
        with _quiet_gql():
            return self.client._execute(query, variables or None)

    @staticmethod
    def _expect(result: dict, typename: str, what: str) -> dict:
        if result.get("__typename") != typename:
            raise AssertionError(f"{what}: expected {typename}, got {json.dumps(result, indent=1)[:3000]}")
        return result

    # -- workspace and daemons
    def location_entry(self) -> dict | None:
        result = self.execute(_WORKSPACE_QUERY)["workspaceOrError"]
        self._expect(result, "Workspace", "workspaceOrError")
        return next((e for e in result["locationEntries"] if e["name"] == LOCATION_NAME), None)

    def daemon_statuses(self) -> dict[str, dict]:
        statuses = self.execute(_DAEMON_HEALTH_QUERY)["instance"]["daemonHealth"]["allDaemonStatuses"]
        return {s["daemonType"]: s for s in statuses}

    # -- runs
    def submit_job(self, job_name: str, *, run_config: dict, tags: dict[str, str] | None = None) -> str:
        """Launch as the UI's launchpad does: the client's launchRun, queued for the daemon."""
        with _quiet_gql():
            return self.client.submit_job_execution(job_name, run_config=run_config, tags=tags or {})

    def submit_replay(self, day: str, config: dict, tags: dict[str, str] | None = None) -> str:
        return self.submit_job(
            REPLAY_JOB,
            run_config={"ops": {"click_data": {"config": config}}},
            tags={"dagster/partition": day, **(tags or {})},
        )

    def run(self, run_id: str) -> dict:
        result = self.execute(_RUN_QUERY, runId=run_id)["runOrError"]
        return self._expect(result, "Run", f"run {run_id}")

    def runs(
        self,
        *,
        job_name: str | None = None,
        tags: dict[str, str] | None = None,
        statuses: list[str] | tuple[str, ...] | None = None,
        limit: int = 100,
    ) -> list[dict]:
        """Runs matching the filter, newest first."""
        run_filter: dict[str, Any] = {}
        if job_name:
            run_filter["pipelineName"] = job_name
        if tags:
            run_filter["tags"] = [{"key": k, "value": v} for k, v in tags.items()]
        if statuses:
            run_filter["statuses"] = list(statuses)
        result = self.execute(_RUNS_QUERY, filter=run_filter, limit=limit)["runsOrError"]
        return self._expect(result, "Runs", "runsOrError")["results"]

    def events(self, run_id: str) -> list[dict]:
        """Every event of the run, in order (all pages)."""
        events: list[dict] = []
        cursor = None
        while True:
            result = self.execute(_EVENTS_QUERY, runId=run_id, cursor=cursor)["runOrError"]
            connection = self._expect(result, "Run", f"events of run {run_id}")["eventConnection"]
            events.extend(connection["events"])
            cursor = connection["cursor"]
            if not connection["hasMore"]:
                return events

    def describe_run(self, run_id: str, last: int = 25) -> str:
        """Status and last log messages of a run, for failure messages."""
        try:
            run = self.run(run_id)
            messages = [
                f"  {e.get('level')} {e['__typename']}: {(e.get('message') or '')[:300]}"
                for e in self.events(run_id)
            ][-last:]
            return f"run {run_id} {run['status']} tags={run_tags(run)}\n" + "\n".join(messages)
        except Exception as error:  # noqa: BLE001 - diagnostics only
            return f"run {run_id}: could not describe ({error!r})"

    def wait_for_run(self, run_id: str, timeout_s: float = RUN_TIMEOUT_S, statuses=TERMINAL) -> dict:
        """The run once its status is one of ``statuses`` (by default: finished)."""
        return wait_for(
            lambda: (run := self.run(run_id))["status"] in statuses and run,
            timeout_s=timeout_s,
            what=f"run {run_id} to reach {sorted(statuses)}",
            details=lambda: self.describe_run(run_id) + "\n" + self._details(),
        )

    def terminate(self, run_id: str) -> dict:
        return self.execute(_TERMINATE_MUTATION, runId=run_id)["terminateRun"]

    def materializations(self, run_id: str) -> list[dict]:
        """The run's materialization events: ``{asset, partition, metadata}``."""
        return [
            {"asset": "/".join(e["assetKey"]["path"]), "partition": e["partition"],
             "metadata": metadata_values(e["metadataEntries"])}
            for e in self.events(run_id)
            if e["__typename"] == "MaterializationEvent"
        ]

    def observations(self, run_id: str) -> list[dict]:
        return [
            {"asset": "/".join(e["assetKey"]["path"]), "partition": e["partition"],
             "metadata": metadata_values(e["metadataEntries"])}
            for e in self.events(run_id)
            if e["__typename"] == "ObservationEvent"
        ]

    def asset_materializations(self, asset: str, limit: int = 200) -> list[dict]:
        result = self.execute(_ASSET_MATERIALIZATIONS_QUERY, path=[asset], limit=limit)["assetOrError"]
        self._expect(result, "Asset", f"asset {asset}")
        return [
            {"runId": m["runId"], "partition": m["partition"], "metadata": metadata_values(m["metadataEntries"])}
            for m in result["assetMaterializations"]
        ]

    def partition_stats(self, asset: str) -> dict:
        result = self.execute(_PARTITION_STATS_QUERY, path=[asset])["assetNodeOrError"]
        return self._expect(result, "AssetNode", f"asset node {asset}")["partitionStats"]

    # -- backfills
    def launch_job_backfill(
        self, job_name: str, partitions: list[str], *, run_config: dict | None = None, tags: dict[str, str] | None = None
    ) -> str:
        """The UI's "Launch backfill" of a partitioned job: its partition set, chosen partitions."""
        params: dict[str, Any] = {
            "selector": {
                "partitionSetName": f"{job_name}_partition_set",
                "repositorySelector": {"repositoryLocationName": LOCATION_NAME, "repositoryName": REPOSITORY_NAME},
            },
            "partitionNames": partitions,
            "tags": [{"key": k, "value": v} for k, v in (tags or {}).items()],
        }
        if run_config is not None:
            params["runConfigData"] = run_config
        result = self.execute(_BACKFILL_MUTATION, params=params)["launchPartitionBackfill"]
        return self._expect(result, "LaunchBackfillSuccess", "launchPartitionBackfill")["backfillId"]

    def backfill(self, backfill_id: str) -> dict:
        result = self.execute(_BACKFILL_QUERY, id=backfill_id)["partitionBackfillOrError"]
        return self._expect(result, "PartitionBackfill", f"backfill {backfill_id}")

    # -- schedules and sensors
    def schedule_dry_run(self, timestamp: float, schedule_name: str = SCHEDULE_NAME) -> dict:
        """The UI's "Test schedule": evaluate the tick at (or next after) ``timestamp``."""
        selector = {
            "repositoryLocationName": LOCATION_NAME,
            "repositoryName": REPOSITORY_NAME,
            "scheduleName": schedule_name,
        }
        result = self.execute(_SCHEDULE_DRY_RUN_MUTATION, selector=selector, timestamp=float(timestamp))
        tick = self._expect(result["scheduleDryRun"], "DryRunInstigationTick", "scheduleDryRun")
        evaluation = tick["evaluationResult"]
        if evaluation["error"]:
            raise AssertionError(f"{schedule_name} raised: {evaluation['error']['message']}\n{evaluation['error']['stack']}")
        return evaluation

    def sensor_ticks(self, sensor_name: str = SENSOR_NAME) -> Any:
        selector = {"repositoryLocationName": LOCATION_NAME, "repositoryName": REPOSITORY_NAME, "sensorName": sensor_name}
        return self.execute(_SENSOR_TICKS_QUERY, selector=selector)["sensorOrError"]

    def details(self) -> str:
        return self._details()


# --------------------------------------------------------------------------- processes


def _proc_stat(pid: int) -> tuple[int, int, str] | None:
    """(ppid, pgid, state) of a live process, None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw[raw.rfind(")") + 2 :].split()  # the command name may contain spaces and ')'
    return int(fields[1]), int(fields[2]), fields[0]


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def process_tree(root_pid: int, pgid: int) -> set[int]:
    """Live (non-zombie) processes in the group ``pgid`` or descending from ``root_pid``."""
    stats = {pid: st for pid in _all_pids() if (st := _proc_stat(pid)) is not None and st[2] != "Z"}
    members = {pid for pid, (_, group, _) in stats.items() if group == pgid}
    frontier = {root_pid}
    while frontier:
        children = {pid for pid, (ppid, _, _) in stats.items() if ppid in frontier} - members
        members |= children
        frontier = children
    return {pid for pid in members if pid in stats}


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200]
    except OSError:
        return "?"


def _reset_signals() -> None:
    # A shell that backgrounds the test run may have left SIGINT/SIGTERM ignored; dagster dev
    # (and the processes it spawns) inherit that and would then ignore our shutdown signals.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@dataclass
class DagsterDev:
    """A running ``dagster dev`` and everything it was given."""

    proc: subprocess.Popen
    port: int
    home: Path
    log_path: Path
    csv_path: Path
    storage_dir: Path
    bootstrap_servers: str
    log_summary: dict
    instance: str = "sqlite"
    postgres_env: dict[str, str] = field(default_factory=dict)  # DAGSTER_PG_* of the postgres instance
    known_pids: set[int] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as error:
            return f"(no dagster dev output: {error})"
        text = re.sub(r"\x1b\[[0-9;]*m", "", text)  # its colored log format
        return f"--- last {lines} lines of {self.log_path} ---\n" + "\n".join(text.splitlines()[-lines:])

    def remember_processes(self) -> None:
        self.known_pids |= process_tree(self.proc.pid, self.proc.pid)

    def stop(self) -> list[str]:
        """SIGINT (dagster dev shuts its webserver and daemon down), then the process group.

        Returns a description of any process that survived even SIGKILL (should be none).
        """
        self.remember_processes()
        pgid = self.proc.pid  # start_new_session: the leader's pid is the group id
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=STOP_TIMEOUT_S)

        def alive() -> set[int]:
            return process_tree(self.proc.pid, pgid) | {p for p in self.known_pids if _is_alive(p)}

        for sig, grace_s in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 10.0)):
            if not alive():
                break
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)
            for pid in alive():  # anything that left the group (its own session)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            if self.proc.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=grace_s)
            deadline = time.monotonic() + grace_s
            while alive() and time.monotonic() < deadline:
                time.sleep(0.2)
        return [f"{pid}: {_cmdline(pid)}" for pid in sorted(alive())]


def _is_alive(pid: int) -> bool:
    st = _proc_stat(pid)
    return st is not None and st[2] != "Z"


def start_dagster_dev(
    root: Path, bootstrap_servers: str, port: int, postgres_env: dict[str, str] | None = None
) -> DagsterDev:
    """``postgres_env`` (the DAGSTER_PG_* variables): the deployment's instance, else the project's."""
    from clickstream_dagster.generator import write_log

    home = root / "dagster_home"
    home.mkdir()
    shutil.copy(DEPLOY_DAGSTER_YAML if postgres_env else PROJECT_DAGSTER_YAML, home / "dagster.yaml")
    csv_path = root / "clickstream.csv"
    summary = write_log(csv_path, rows=LOG_ROWS, seed=LOG_SEED).as_dict()
    storage_dir = root / "parquet"
    storage_dir.mkdir()
    log_path = root / "dagster-dev.log"

    env = dict(os.environ)
    env.update(
        DAGSTER_HOME=str(home),
        KAFKA_BOOTSTRAP_SERVERS=bootstrap_servers,
        CLICKSTREAM_CSV=str(csv_path),
        CLICKSTREAM_STORAGE_DIR=str(storage_dir),
        # The schedule tests assume the documented defaults, whatever the developer's shell has.
        REPLAY_CYCLE_CRON="0 * * * *",
        PYTHONUNBUFFERED="1",
    )
    env.update(postgres_env or {})
    for var in ("REPLAY_CYCLE_TOPIC", "REPLAY_CYCLE_SPEED"):
        env.pop(var, None)
    dagster_bin = Path(sys.executable).with_name("dagster")
    command = [str(dagster_bin)] if dagster_bin.exists() else [sys.executable, "-m", "dagster"]
    command += ["dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_reset_signals,
        )
    instance = "postgres" if postgres_env else "sqlite"
    return DagsterDev(
        proc, port, home, log_path, csv_path, storage_dir, bootstrap_servers, summary, instance, postgres_env or {}
    )


class PortInUse(RuntimeError):
    """The webserver could not bind its port (taken since free_port() chose it)."""


_BIND_ERROR = "error while attempting to bind on address"


def wait_until_ready(dev: DagsterDev, gql: DagsterGraphQL, timeout_s: float = START_TIMEOUT_S) -> None:
    """The code location LOADED and the daemons the tests need healthy, or a failure with the log tail."""
    from dagster_graphql import DagsterGraphQLClientError

    state = {"seen": "nothing yet"}

    def ready() -> bool:
        if dev.proc.poll() is not None:
            raise RuntimeError(f"dagster dev exited early with code {dev.proc.returncode}\n{dev.tail(80)}")
        if _BIND_ERROR in dev.log_path.read_text(errors="replace"):
            # The webserver logs this and hangs on: fail now rather than at the deadline.
            raise PortInUse(f"port {dev.port} already in use\n{dev.tail(80)}")
        try:
            entry = gql.location_entry()
            if entry is None:
                state["seen"] = "no code location entry yet"
                return False
            error = entry["locationOrLoadError"]
            if error and error["__typename"] == "PythonError":
                raise RuntimeError(f"code location {LOCATION_NAME} failed to load: {error['message']}\n{error['stack']}")
            if entry["loadStatus"] != "LOADED" or not error or error["__typename"] != "RepositoryLocation":
                state["seen"] = f"location {entry['loadStatus']}"
                return False
            daemons = gql.daemon_statuses()
        except DagsterGraphQLClientError as error:  # webserver not listening yet
            state["seen"] = f"GraphQL not answering: {str(error).splitlines()[0]}"
            return False
        unhealthy = [d for d in REQUIRED_DAEMONS if not (daemons.get(d) or {}).get("healthy")]
        state["seen"] = f"location LOADED, daemons not healthy yet: {unhealthy}"
        return not unhealthy

    try:
        wait_for(ready, timeout_s=timeout_s, what=f"dagster dev on port {dev.port}", interval_s=1.0)
    except WaitTimeout as error:
        raise RuntimeError(f"{error}; last state: {state['seen']}\n{dev.tail(80)}") from None


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", params=INSTANCES)
def dagster_dev(kafka_bootstrap_servers: str, local_kafka, tmp_path_factory, request) -> Iterator[DagsterDev]:
    postgres_env = None
    if request.param == "postgres":  # only then start PostgreSQL (`-k sqlite` runs without it)
        server = request.getfixturevalue("postgres_server")
        postgres_env = server.env(server.create_database("e2e"))
    with running_dagster_dev(tmp_path_factory, kafka_bootstrap_servers, local_kafka, postgres_env) as dev:
        yield dev


@contextlib.contextmanager
def running_dagster_dev(
    tmp_path_factory, kafka_bootstrap_servers: str, local_kafka, postgres_env: dict[str, str] | None = None,
    name: str = "dagster-dev",
) -> Iterator[DagsterDev]:
    """``dagster dev`` started, ready to serve GraphQL, and stopped (every process checked gone)."""
    for attempt in (1, 2):  # a second port if another process took the first one meanwhile
        port = local_kafka.free_port(exclude=RESERVED_PORTS)
        dev = start_dagster_dev(tmp_path_factory.mktemp(name), kafka_bootstrap_servers, port, postgres_env)
        try:
            wait_until_ready(dev, DagsterGraphQL(port, timeout_s=10))
            break
        except PortInUse as error:
            _stop_or_raise(dev)
            if attempt == 2:
                pytest.fail(str(error), pytrace=False)
        except BaseException as error:
            _stop_or_raise(dev)
            if isinstance(error, RuntimeError):
                pytest.fail(str(error), pytrace=False)
            raise
    try:
        dev.remember_processes()
        yield dev
    finally:
        _stop_or_raise(dev)


def _stop_or_raise(dev: DagsterDev) -> None:
    survivors = dev.stop()
    if survivors:
        raise RuntimeError("processes of dagster dev survived SIGKILL:\n" + "\n".join(survivors))


@pytest.fixture(scope="module")
def gql(dagster_dev: DagsterDev) -> DagsterGraphQL:
    return DagsterGraphQL(dagster_dev.port, details=lambda: dagster_dev.tail(40))


@pytest.fixture(scope="module")
def prepared_run(dagster_dev: DagsterDev, gql: DagsterGraphQL) -> dict:
    """The prepare run that the sensor launches on its first evaluation, once finished."""

    def sensor_run() -> dict | None:
        runs = gql.runs(job_name=PREPARE_JOB, tags={"dagster/sensor_name": SENSOR_NAME})
        return runs[-1] if runs else None  # the oldest: the first evaluation's

    run = wait_for(
        sensor_run,
        timeout_s=RUN_TIMEOUT_S,
        what=f"{SENSOR_NAME} to launch a {PREPARE_JOB} run",
        interval_s=1.0,
        details=lambda: f"sensor ticks: {json.dumps(gql.sensor_ticks(), indent=1)}\n{dagster_dev.tail(40)}",
    )
    return gql.wait_for_run(run["runId"])


@pytest.fixture(scope="module")
def prepared_days(prepared_run: dict, gql: DagsterGraphQL) -> dict[str, int]:
    """Rows per prepared day (materialization metadata of the prepare run); the run must have succeeded."""
    if prepared_run["status"] != "SUCCESS":
        pytest.fail(f"the prepare run did not succeed:\n{gql.describe_run(prepared_run['runId'])}", pytrace=False)
    rows = {
        m["partition"]: m["metadata"]["rows"]
        for m in gql.materializations(prepared_run["runId"])
        if m["asset"] == "clickstream_events"
    }
    return rows


@pytest.fixture
def idle_replays(gql: DagsterGraphQL) -> None:
    """No replay queued or running: a test's ticks and pools start from a quiet instance."""
    for run in gql.runs(job_name=REPLAY_JOB, statuses=IN_PROGRESS):
        if run["status"] != "CANCELING":
            gql.terminate(run["runId"])
    wait_for(
        lambda: not gql.runs(job_name=REPLAY_JOB, statuses=IN_PROGRESS),
        timeout_s=RUN_TIMEOUT_S,
        what="no replay run in progress",
        details=gql.details,
    )


@pytest.fixture
def replay_topic(kafka_bootstrap_servers: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A topic name nobody has used: the replay creates it (3 partitions); deleted afterwards."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name)[:60].strip("-.")
    name = f"e2e-{base}-{uuid.uuid4().hex[:8]}"
    yield name
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap_servers, client_id="e2e-cleanup")
    except KafkaError as error:
        warnings.warn(f"could not connect to delete topic {name}: {error!r}", stacklevel=1)
        return
    try:
        if name in admin.list_topics():
            admin.delete_topics([name], timeout_ms=30000)
    except KafkaError as error:
        warnings.warn(f"could not delete topic {name}: {error!r}", stacklevel=1)
    finally:
        admin.close()


# --------------------------------------------------------------------------- Kafka


def topic_size(bootstrap_servers: str, topic: str) -> int:
    """Records in the topic (sum over partitions of end - beginning offset); 0 if it does not exist."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, client_id="e2e-size", enable_auto_commit=False)
    try:
        if topic not in consumer.topics():
            return 0
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not partitions:
            return 0
        ends = consumer.end_offsets(partitions)
        begins = consumer.beginning_offsets(partitions)
        return sum(ends[tp] - begins[tp] for tp in partitions)
    finally:
        consumer.close()


def read_topic(bootstrap_servers: str, topic: str, timeout_s: float = 60.0) -> list:
    """Every committed record in the topic right now (up to the end offsets), all partitions.

    Read as a consumer of an exactly-once replay should: read_committed, so aborted records never show.
    """
    from kafka import KafkaConsumer, TopicPartition

    from clickstream_dagster.kafka_client import KafkaSettings, stable_end_offsets

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap_servers, client_id="e2e-read", enable_auto_commit=False, group_id=None,
        isolation_level="read_committed",
    )
    try:
        assert topic in consumer.topics(), f"topic {topic} does not exist"
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        # Not the bare end offsets: a commit that just returned may not have its markers yet.
        ends = stable_end_offsets(KafkaSettings(bootstrap_servers=bootstrap_servers), consumer, partitions)
        records: list = []
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < ends[tp] for tp in partitions):
            if time.monotonic() >= deadline:
                positions = {tp.partition: (consumer.position(tp), ends[tp]) for tp in partitions}
                raise WaitTimeout(f"read only {len(records)} records of {topic} in {timeout_s:.0f} s: {positions}")
            for batch in consumer.poll(timeout_ms=1000).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


@pytest.fixture
def postgres_server_if_used(dagster_dev: DagsterDev, request: pytest.FixtureRequest):
    """The session's PostgreSQL server when ``dagster_dev`` runs on it, else None."""
    return request.getfixturevalue("postgres_server") if dagster_dev.instance == "postgres" else None
