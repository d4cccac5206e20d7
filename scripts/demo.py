"""`make demo`: broker up, all 15 days prepared, one day replayed, a few messages read back.

Runs are recorded in the project-local DAGSTER_HOME (.dagster_home), so `make dev` shows
them in the UI afterwards. Set KAFKA_BOOTSTRAP_SERVERS to use your own cluster instead of
the local broker (KAFKA_PORT, KAFKA_STATE_DIR: where it listens and keeps its files);
DEMO_DAY (default 2012-03-01), DEMO_RATE (msgs/s, default 2000) and DEMO_TOPIC (default
click-data) choose what is replayed, how fast and where. When another replay into the topic
is running or queued, the demo names it and stops; DEMO_WAIT=1 waits for it instead.

Known failures (a port in use, no Java, a broker that cannot be reached, a failed run) are
one line on stderr and exit code 1; Ctrl-C stops the demo, and its replay, at once (130).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DAY = os.environ.get("DEMO_DAY", "2012-03-01")
RATE = float(os.environ.get("DEMO_RATE", "2000"))
TOPIC = os.environ.get("DEMO_TOPIC") or "click-data"
WAIT = os.environ.get("DEMO_WAIT", "").lower() in ("1", "true", "yes")
DAGSTER_PORT = os.environ.get("DAGSTER_PORT") or "3000"
UI = f"http://127.0.0.1:{DAGSTER_PORT}"
SHOW_MESSAGES = 5
IN_PROGRESS_NAMES = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING")
WAIT_REPORT_S = 10.0
# A daemon whose last heartbeat is older than this is not running: queued runs will not move.
DAEMON_GONE_S = 120.0


class DemoError(Exception):
    """A failure the user can act on: printed as one line, no traceback."""


def load_local_kafka():
    spec = importlib.util.spec_from_file_location("local_kafka", REPO / "scripts" / "local_kafka.py")
    local_kafka = importlib.util.module_from_spec(spec)
    sys.modules["local_kafka"] = local_kafka
    spec.loader.exec_module(local_kafka)
    return local_kafka


def start_local_broker() -> str:
    local_kafka = load_local_kafka()
    state_dir = Path(os.environ.get("KAFKA_STATE_DIR") or REPO / ".kafka")
    try:
        broker = local_kafka.start_broker(state_dir, port=int(os.environ.get("KAFKA_PORT") or 9092))
    except local_kafka.LocalKafkaError as error:
        # The known causes (port in use, no Java, no Maven) are one line; a broker that died
        # while starting adds its log tail, which is worth showing.
        raise DemoError(f"could not start the local Kafka broker: {error}") from None
    state = "already up" if broker.already_running else "started"
    print(
        f"Kafka broker {state} at {broker.bootstrap_servers} (log: {broker.log_path}; stop: make kafka-down)"
    )
    return broker.bootstrap_servers


# --------------------------------------------------------------------------- a busy topic


def replays_in_progress(instance, topic: str) -> list:
    """Runs queued or running that replay into ``topic`` (by their topic tag, or an asset run of
    click_data not started yet, which has no tag until its step starts)."""
    from dagster import AssetKey, DagsterRunStatus, RunsFilter

    from clickstream_dagster.assets.replay import TOPIC_TAG

    statuses = [DagsterRunStatus(name) for name in IN_PROGRESS_NAMES]
    runs = [r.dagster_run for r in instance.get_run_records(filters=RunsFilter(statuses=statuses), limit=200)]

    def into_topic(run) -> bool:
        if TOPIC_TAG in run.tags:
            return run.tags[TOPIC_TAG] == topic
        return AssetKey("click_data") in (run.asset_selection or ())

    return [run for run in runs if into_topic(run)]


def describe(run) -> str:
    day = run.tags.get("dagster/partition", "?")
    by = (
        run.tags.get("dagster/sensor_name")
        or run.tags.get("dagster/schedule_name")
        or "the launchpad or a backfill"
    )
    return f"run {run.run_id[:8]} ({run.job_name}, {day}, {run.status.value}, launched by {by})"


def latest_progress(instance, run_id: str, cursor: str | None) -> tuple[str | None, str | None]:
    """The run's newest log line since ``cursor`` (its progress lines: sent/total, rate, ETA)."""
    connection = instance.get_records_for_run(run_id, cursor=cursor)
    lines = [r.event_log_entry.user_message for r in connection.records if r.event_log_entry.user_message]
    return (lines[-1] if lines else None), connection.cursor


def daemon_is_running(instance) -> bool:
    heartbeats = instance.get_daemon_heartbeats().values()
    return any(time.time() - beat.timestamp < DAEMON_GONE_S for beat in heartbeats)


def wait_for_topic(instance, topic: str) -> None:
    """Fail fast naming the replays into ``topic`` and what to do; with DEMO_WAIT=1 wait for
    them instead, showing their progress. Two replays never interleave in one topic."""
    busy = replays_in_progress(instance, topic)
    if not busy:
        return
    names = "; ".join(describe(run) for run in busy)
    notes = ""
    if not daemon_is_running(instance):
        notes += (
            " The Dagster daemon is not running (`make dev` stopped?): these runs will not move until it is."
        )
    if any(run.tags.get("dagster/sensor_name") == "replay_feed" for run in busy):
        notes += " The live feed launches its next day while each one plays: switch replay_feed off first."
    if not WAIT:
        raise DemoError(
            f"{topic} is busy: {names}.{notes} Either wait for it (DEMO_WAIT=1 make demo waits, showing "
            f"its progress), terminate it in the UI ({UI}/runs/{busy[-1].run_id}), or replay into another "
            "topic (DEMO_TOPIC=demo make demo)."
        )
    print(f"{topic} is busy: {names}.{notes} Waiting for it (Ctrl-C to stop) ...", flush=True)
    cursors: dict[str, str | None] = {}
    latest: dict[str, str] = {}
    last_report = 0.0
    while busy := replays_in_progress(instance, topic):
        run = busy[-1]  # the oldest: the one playing or first in the queue
        line, cursors[run.run_id] = latest_progress(instance, run.run_id, cursors.get(run.run_id))
        if line:
            latest[run.run_id] = line
        if time.monotonic() - last_report >= WAIT_REPORT_S:
            ahead = f", {len(busy) - 1} more queued" if len(busy) > 1 else ""
            shown = f": {latest[run.run_id]}" if run.run_id in latest else ""
            print(f"  waiting for {describe(run)}{ahead}{shown}", flush=True)
            last_report = time.monotonic()
        time.sleep(1.0)
    print(f"  {topic} is free.", flush=True)


# --------------------------------------------------------------------------- the demo


class _FirstLine(logging.Formatter):
    RUN_ID = re.compile(r"\b([0-9a-f]{8})-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")

    def format(self, record: logging.LogRecord) -> str:
        return self.RUN_ID.sub(r"\1", super().format(record).splitlines()[0])


def quiet(job):
    """The job with a console logger that shows INFO and above (the replay's progress lines),
    one line per event: no DEBUG step events, no stack traces (the run in the UI has them)."""
    from dagster import logger

    @logger(description="INFO and above, first line only")
    def console(_init_context) -> logging.Logger:
        log = logging.Logger("demo", logging.INFO)  # noqa: LOG001 - one per run: handlers must not pile up
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_FirstLine("  %(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        return log

    return job.with_logger_defs({"console": console})


# Loggers are only built when the run config names them.
QUIET = {"loggers": {"console": {}}}


def step_errors(result) -> list:
    return [
        event.event_specific_data.error
        for event in result.all_events
        if event.is_step_failure and event.event_specific_data and event.event_specific_data.error
    ]


def failure(result, what: str) -> DemoError:
    """The first step failure of an in-process run, as one line naming the run."""
    errors = step_errors(result)
    reason = (
        errors[0].message.strip().splitlines()[0]
        if errors
        else f"run ended {result.dagster_run.status.value}"
    )
    return DemoError(
        f"{what} failed: {reason} (run {result.run_id[:8]}, in the UI: {UI}/runs/{result.run_id})"
    )


def checks_summary(checks) -> str:
    failed = [c for c in checks if not c.passed]
    if not failed:
        return f"{len(checks)} checks passed"
    names = ", ".join(f"{c.check_name} ({c.partition})" if c.partition else c.check_name for c in failed)
    return f"{len(checks) - len(failed)} of {len(checks)} checks passed; FAILED: {names}"


def main() -> int:
    warnings.filterwarnings("ignore", message=".*(beta|preview).*", category=Warning)
    os.environ.setdefault("DAGSTER_HOME", str(REPO / ".dagster_home"))
    from dagster import DagsterInstance

    instance = DagsterInstance.get()
    wait_for_topic(instance, TOPIC)  # before anything is started: fail fast
    if not os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        os.environ["KAFKA_BOOTSTRAP_SERVERS"] = start_local_broker()
    # Imported after the environment is set: definitions read it at load time.
    from clickstream_dagster.definitions import defs
    from clickstream_dagster.sensors import file_version, log_observation

    log_path = Path(defs.resources["clickstream_log"].path)
    if not log_path.is_file():
        raise DemoError(f"the clickstream log {log_path} does not exist (CLICKSTREAM_CSV)")
    prepare = quiet(defs.resolve_job_def("prepare_clickstream"))
    days = prepare.partitions_def.get_partition_keys()
    print(f"Preparing {days[0]}..{days[-1]} from {log_path} ...")
    # The log version this prepare reads, recorded first: the sensor of `make dev` then knows
    # these days come from this very log and does not prepare them again.
    instance.report_runless_asset_event(log_observation(file_version(log_path, None)))
    prepared = prepare.execute_in_process(
        instance=instance,
        run_config=QUIET,
        tags={"dagster/asset_partition_range_start": days[0], "dagster/asset_partition_range_end": days[-1]},
        raise_on_error=False,
    )
    if not prepared.success:
        raise failure(prepared, "preparing the days")
    checks = [
        e.event_specific_data for e in prepared.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"
    ]
    print(f"  run {prepared.run_id[:8]}: {checks_summary(checks)}")
    storage = defs.resources["parquet_io_manager"].base_dir or instance.storage_directory()
    print(f"  day files: {storage}/clickstream_events/{days[0]}.parquet .. {days[-1]}.parquet")
    print(f"  rejects:   {storage}/clickstream_rejects.parquet")

    wait_for_topic(instance, TOPIC)  # again: the feed or a schedule may have started one meanwhile
    # resume: a demo stopped with Ctrl-C goes on where it stopped (each row once); after a
    # finished one (or none) it replays the whole day.
    config = {"topic": TOPIC, "pacing": "max", "max_rate": RATE, "resume": True}
    print(f"Replaying {DAY} into {TOPIC} at up to {RATE:g} msgs/s ...", flush=True)
    replayed = quiet(defs.resolve_job_def("replay_clickstream")).execute_in_process(
        instance=instance,
        partition_key=DAY,
        run_config={"ops": {"click_data": {"config": config}}, **QUIET},
        tags={"clickstream/topic": TOPIC},
        raise_on_error=False,
    )
    if not replayed.success:
        if any(error.cls_name == "DagsterExecutionInterruptedError" for error in step_errors(replayed)):
            raise KeyboardInterrupt  # Ctrl-C inside the step: the run has recorded how far it got
        raise failure(replayed, f"replaying {DAY}")
    [mat] = replayed.asset_materializations_for_node("click_data")
    meta = {k: v.value for k, v in mat.metadata.items()}
    print(
        f"  run {replayed.run_id[:8]}: {meta['messages']} messages ({meta['bytes']} bytes) acknowledged in "
        f"{meta['duration_s']:.1f} s, {meta['rate_msgs_per_s']:.0f} msgs/s, lateness p99 "
        f"{meta.get('lateness_p99_ms', 0):.2f} ms"
    )
    print(f"Reading {SHOW_MESSAGES} of them back from the topic:")
    for partition, offset, key, value in read_back(meta["kafka_offsets"].records, SHOW_MESSAGES):
        body = json.loads(value)
        print(
            f"  p{partition}@{offset} key={key} product={body['productId']} ip={body['ip']} t={body['original_timestamp']}"
        )
    print(
        f"\nDone. `{dev_command()}` opens the Dagster UI at {UI} with these runs (DAGSTER_HOME={instance.root_directory})."
    )
    return 0


def dev_command() -> str:
    """`make dev` with the settings this demo ran with, when they are not the defaults."""
    defaults = {"KAFKA_PORT": "9092", "DAGSTER_PORT": "3000"}
    settings = [
        f"{name}={os.environ[name]}"
        for name in defaults
        if os.environ.get(name, defaults[name]) != defaults[name]
    ]
    return " ".join([*settings, "make dev"])


def read_back(offset_records, count: int):
    """The first messages this run wrote, read from the broker at the offsets it reported."""
    from kafka import KafkaConsumer, TopicPartition

    from clickstream_dagster.definitions import defs

    settings = defs.resources["kafka"].settings()
    consumer = KafkaConsumer(**settings.client_config(), enable_auto_commit=False, consumer_timeout_ms=10_000)
    try:
        spans = {r.data["partition"]: r.data["first_offset"] for r in offset_records}
        partitions = [TopicPartition(TOPIC, p) for p in spans]
        consumer.assign(partitions)
        for tp in partitions:
            consumer.seek(tp, spans[tp.partition])
        out = []
        for record in consumer:
            out.append((record.partition, record.offset, record.key.decode(), record.value))
            if len(out) >= count:
                break
        return out
    finally:
        consumer.close()


def run() -> int:
    """main() with the known failures and Ctrl-C as one line each, never a traceback."""
    import signal

    # SIGTERM stops the demo as Ctrl-C does (Dagster maps it to SIGINT inside a step too).
    signal.signal(signal.SIGTERM, signal.getsignal(signal.SIGINT))
    try:
        return main()
    except DemoError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "\nInterrupted: the demo stopped; a replay it started records what it sent (`make dev` shows the run).",
            file=sys.stderr,
        )
        return 130
    except BaseException as error:
        # Dagster raises its own interrupt error (a BaseException) when Ctrl-C lands in a step.
        if type(error).__name__ == "DagsterExecutionInterruptedError":
            print(
                "\nInterrupted: the demo stopped; its replay run records what it sent (`make dev` shows the run).",
                file=sys.stderr,
            )
            return 130
        raise


WORKER = "CLICKSTREAM_DEMO_WORKER"


def supervise() -> int:
    """Run the demo in a child process with its own session, and pass Ctrl-C / SIGTERM to it alone.

    A terminal's Ctrl-C signals its whole foreground process group: the helper processes Dagster
    starts inside a run (to mirror its logs) would each die printing a KeyboardInterrupt traceback.
    The child stops its replay and exits 130 in a few seconds; a second Ctrl-C is passed on too.
    """
    import signal
    import subprocess

    child = subprocess.Popen(
        [sys.executable, __file__], env={**os.environ, WORKER: "1"}, start_new_session=True
    )

    def forward(signo, _frame) -> None:
        if child.poll() is None:
            child.send_signal(signo)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    code = child.wait()
    return 128 - code if code < 0 else code  # killed by a signal: the shell's convention


if __name__ == "__main__":
    raise SystemExit(run() if os.environ.get(WORKER) else supervise())
