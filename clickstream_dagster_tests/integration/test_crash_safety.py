"""Replays under faults, against a real broker: kill -9, zombies, a dead or paused broker, a
second writer. Every claim is checked by reading the topic back with read_committed."""

import contextlib
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import termios
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

import polars as pl
import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, build_sensor_context, materialize
from dagster._core.instance.ref import InstanceRef
from dagster._core.storage.tags import WILL_RETRY_TAG
from kafka import KafkaConsumer, TopicPartition

from clickstream_dagster.assets import prepare, replay
from clickstream_dagster.event_time import as_of, shift_days, visitor_id
from clickstream_dagster.injection import default_seed, plan_injection
from clickstream_dagster.checkpoints import DEFAULT_CHECKPOINT_TOPIC, Checkpoint, ReplayStatus, transactional_id
from clickstream_dagster.generator import write_log
from clickstream_dagster.kafka_client import CheckpointsIncomplete, KafkaPublisher, KafkaSettings, ensure_topic, read_checkpoints
from clickstream_dagster.librdkafka_client import LibrdkafkaPublisher
from clickstream_dagster.replay import ProducerFenced
from clickstream_dagster.resources.kafka import KafkaResource
from clickstream_dagster.resources.schema_registry import SchemaRegistryResource
from clickstream_dagster.resources.log_file import ClickstreamLogFile
from clickstream_dagster.resources.parquet import DailyParquetIOManager
from clickstream_dagster.sensors import replay_watchdog
from clickstream_dagster_tests.third_party_readers import confluent_read, console_consumer_read

pytestmark = pytest.mark.integration
DAY, OTHER_DAY = "2012-03-05", "2012-03-06"
DAGSTER = Path(sys.executable).parent / "dagster"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash")
    write_log(root / "clickstream.csv", rows=30000, seed=5)
    storage = root / "parquet"
    res = {
        "clickstream_log": ClickstreamLogFile(path=str(root / "clickstream.csv")),
        "parquet_io_manager": DailyParquetIOManager(base_dir=str(storage)),
    }
    assert materialize(
        [prepare.clickstream_events],
        resources=res,
        tags={"dagster/asset_partition_range_start": "2012-03-01", "dagster/asset_partition_range_end": "2012-03-15"},
    ).success
    return res


@pytest.fixture(params=["kafka-python", "librdkafka"])
def client(request):
    """The producer library: every guarantee below holds for both."""
    return request.param


@pytest.fixture
def topic():
    return f"crash-{uuid.uuid4().hex[:10]}"


def day_rows(prepared, day=DAY) -> pl.DataFrame:
    return pl.read_parquet(f"{prepared['parquet_io_manager'].base_dir}/clickstream_events/{day}.parquet")


def read_committed(bootstrap: str, topic: str, settle_s: float = 3.0, deadline_s: float = 60.0) -> list:
    """Every committed record of the topic: polls until nothing new arrived for ``settle_s``."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        end = consumer.end_offsets(partitions)
        records, quiet_since, stop = [], time.monotonic(), time.monotonic() + deadline_s
        while time.monotonic() < stop:
            batch = [r for rs in consumer.poll(timeout_ms=300).values() for r in rs]
            records.extend(batch)
            if batch:
                quiet_since = time.monotonic()
            caught_up = all(consumer.position(tp) >= end[tp] for tp in partitions)
            if caught_up and time.monotonic() - quiet_since >= settle_s:
                break
        return records
    finally:
        consumer.close()


def assert_every_row_exactly_once(records, rows: pl.DataFrame) -> None:
    """The day's rows, each once, and each visitor's rows in their original order."""
    fields = rows.columns
    seen = [tuple(json.loads(r.value)[c] for c in fields) for r in records]
    expected = [tuple(row) for row in rows.iter_rows()]
    duplicates = len(seen) - len(set(seen))
    assert duplicates == 0, f"{duplicates} rows delivered more than once"
    assert sorted(seen, key=repr) == sorted(expected, key=repr)
    by_key = defaultdict(list)
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        by_key[r.key.decode()].append(json.loads(r.value)["original_timestamp"])
    expected_by_key = rows.group_by("userId", maintain_order=True).agg("original_timestamp")
    assert dict(by_key) == {user: list(ts) for user, ts in expected_by_key.iter_rows()}


def checkpoint_of(bootstrap: str, topic: str, day: str = DAY):
    for checkpoint in read_checkpoints(KafkaSettings(bootstrap_servers=bootstrap), DEFAULT_CHECKPOINT_TOPIC):
        if checkpoint.topic == topic and checkpoint.day == day:
            return checkpoint
    return None


def wait_for(condition, timeout_s: float, what: str, every_s: float = 0.2, details=lambda: ""):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}\n{details()}")


def replay_logs(home: Path, tail_chars: int = 3000) -> str:
    """The end of every CLI replay's output under ``home``: what a timed-out wait shows."""
    return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-tail_chars:]}" for log in sorted(home.glob("replay-*.log")))


def first_commit_of(process: subprocess.Popen, bootstrap: str, topic: str, home: Path, timeout_s: float = 90):
    """The replay's first checkpoint; a replay that exited before committing fails at once, with its output."""
    def committed_or_exited():
        if process.poll() is not None:
            raise AssertionError(f"the replay to {topic} exited ({process.returncode}) before its first commit\n{replay_logs(home)}")
        return checkpoint_of(bootstrap, topic)

    return wait_for(committed_or_exited, timeout_s, f"the first commit of the replay to {topic}", details=lambda: replay_logs(home))


def cli_replay(
    prepared, bootstrap: str, home: Path, day: str = DAY, client: str = "kafka-python", terminal: bool = False, **config
) -> subprocess.Popen:
    """``dagster asset materialize`` of one day, as a person runs it, in its own process group;
    with ``terminal``, in a terminal of its own (a pty, its controlling terminal) whose screen
    is copied into the log, as a person sees it."""
    env = os.environ | {
        "DAGSTER_HOME": str(home),
        "KAFKA_CLIENT": client,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "CLICKSTREAM_STORAGE_DIR": prepared["parquet_io_manager"].base_dir,
        "CLICKSTREAM_CSV": prepared["clickstream_log"].path,
    }
    home.mkdir(parents=True, exist_ok=True)
    command = [
        str(DAGSTER), "asset", "materialize", "-m", "clickstream_dagster.definitions", "--select", "click_data",
        "--partition", day, "--config-json", json.dumps({"ops": {"click_data": {"config": config}}}),
    ]
    log = open(home / f"replay-{day}-{uuid.uuid4().hex[:6]}.log", "wb")  # noqa: SIM115 - closed with the process
    if not terminal:
        return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    screen, tty = os.openpty()
    process = subprocess.Popen(
        command, env=env, stdin=tty, stdout=tty, stderr=tty, start_new_session=True,
        # After setsid: the pty becomes the session's controlling terminal, as a shell's is.
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
    )
    os.close(tty)

    def copy_the_screen() -> None:
        with log, contextlib.suppress(OSError):  # EIO once every process on the terminal is gone
            while chunk := os.read(screen, 65536):
                log.write(chunk)
                log.flush()
        os.close(screen)

    threading.Thread(target=copy_the_screen, daemon=True).start()
    return process


def kill_9_after(process: subprocess.Popen, bootstrap: str, topic: str, home: Path, rows: int) -> None:
    """kill -9 of the CLI replay's process group once ``rows`` rows are committed (or it timed out)."""
    try:
        wait_for(lambda: (c := checkpoint_of(bootstrap, topic)) and c.next_row >= rows, 90, f"{rows} committed rows",
                 details=lambda: replay_logs(home))
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def materialize_replay(prepared, kafka: KafkaResource, day: str = DAY, instance=None, **config):
    """The replay and its read-back check, as the replay_clickstream job runs them."""
    return materialize(
        [prepare.clickstream_events, replay.click_data, replay.delivered_exactly_once],
        selection=[replay.click_data, replay.delivered_exactly_once],
        resources=prepared | {"kafka": kafka, "schema_registry": SchemaRegistryResource()},
        partition_key=day,
        instance=instance,
        run_config={"ops": {"click_data": {"config": config}}},
        raise_on_error=False,
    )


def test_kill_9_of_the_process_group_then_resume_delivers_every_row_exactly_once(prepared, kafka_bootstrap_servers, topic, tmp_path, client):
    rows = day_rows(prepared)
    first = cli_replay(prepared, kafka_bootstrap_servers, tmp_path / "home", client=client, topic=topic, pacing="fixed", interval_ms=3)
    kill_9_after(first, kafka_bootstrap_servers, topic, tmp_path / "home", rows=400)
    killed_at = checkpoint_of(kafka_bootstrap_servers, topic)
    assert killed_at.status == ReplayStatus.RUNNING and killed_at.next_row < rows.height

    second = cli_replay(prepared, kafka_bootstrap_servers, tmp_path / "home", client=client, topic=topic, pacing="max", resume=True)
    assert second.wait(180) == 0
    records = read_committed(kafka_bootstrap_servers, topic)
    assert_every_row_exactly_once(records, rows)
    final = checkpoint_of(kafka_bootstrap_servers, topic)
    assert (final.status, final.next_row) == (ReplayStatus.FINISHED, rows.height)
    # The killed attempt's open transaction was aborted, not delivered: everything before
    # its last checkpoint came from it, everything after from the resumed one.
    run_ids = [dict(r.headers)["dagster_run_id"] for r in sorted(records, key=lambda r: json.loads(r.value)["original_timestamp"])]
    assert len(set(run_ids)) == 2
    # Readers no one here wrote, read_committed, find the same: each row once, in per-visitor order.
    for read in (console_consumer_read, confluent_read):
        assert_every_row_exactly_once(read(kafka_bootstrap_servers, topic, rows.height), rows)


def test_a_day_as_of_another_date_with_labelled_disorder_keeps_its_plan_through_kill_9_and_resume(
    prepared, kafka_bootstrap_servers, topic, tmp_path, client
):
    """event_date, visitor_epoch, late_share and duplicate_share together; killed mid-day and
    resumed at another pacing, the stream read by Kafka's console consumer is the planned one."""
    limit, epoch, event_date = 600, 3, "2026-12-01"
    disorder = {"late_share": 0.1, "late_by_s": 300.0, "duplicate_share": 0.1}
    config = {"topic": topic, "limit": limit, "event_date": event_date, "visitor_epoch": epoch, **disorder}
    # The plan, from the Parquet day and the pure modules alone.
    rows = as_of(day_rows(prepared).head(limit), days=shift_days(DAY, event_date), visitor_epoch=epoch)
    plan = plan_injection(rows["original_timestamp"].to_numpy(), seed=default_seed(DAY, topic), **disorder)
    planned = [
        (row["userId"], row["original_timestamp"], row["productId"], (label or b"").decode())
        for row, label in zip(rows[plan.rows.tolist()].iter_rows(named=True), plan.labels)
    ]

    first = cli_replay(prepared, kafka_bootstrap_servers, tmp_path / "home", client=client, pacing="fixed", interval_ms=5, **config)
    kill_9_after(first, kafka_bootstrap_servers, topic, tmp_path / "home", rows=200)
    assert checkpoint_of(kafka_bootstrap_servers, topic).next_row < len(plan)

    result = materialize_replay(
        prepared, KafkaResource(bootstrap_servers=kafka_bootstrap_servers, client=client), pacing="max", resume=True, **config
    )
    assert result.success
    [mat] = result.asset_materializations_for_node("click_data")
    assert (mat.metadata["late_messages"].value, mat.metadata["duplicate_messages"].value) == (plan.late, plan.duplicates)
    assert (mat.metadata["event_date"].text, mat.metadata["event_date_shift_days"].value) == (event_date, shift_days(DAY, event_date))
    [check] = result.get_asset_check_evaluations()
    assert check.passed, check.metadata
    assert (check.metadata["injected_late"].value, check.metadata["injected_duplicates"].value) == (plan.late, plan.duplicates)

    records = console_consumer_read(kafka_bootstrap_servers, topic, len(plan), headers=True)
    assert len({r.headers["dagster_run_id"] for r in records}) == 2  # both attempts sent some
    read = {}
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        body = json.loads(r.value)
        assert r.key == body["userId"].encode()
        label = r.headers.get("clickstream-injected", b"").decode()
        read.setdefault(r.key.decode(), []).append((body["userId"], body["original_timestamp"], body["productId"], label))
    by_key = {}
    for message in planned:
        by_key.setdefault(message[0], []).append(message)
    # Each visitor's messages, labels included, in the planned order: the resume continued the plan.
    assert read == by_key
    # Moved to the event date, time of day kept; the epoch's ids; ip unchanged.
    assert all(event_date == time.strftime("%Y-%m-%d", time.gmtime(ts)) for _, ts, _, _ in planned)
    recorded = day_rows(prepared).head(limit)
    assert rows["userId"].to_list() == [visitor_id(v, epoch) for v in recorded["userId"]]
    assert set(rows["userId"]).isdisjoint(recorded["userId"]) and rows["ip"].equals(recorded["ip"])
    # A duplicate is its original byte for byte.
    values = {}
    for r in records:
        values.setdefault((r.key, r.headers.get("clickstream-injected") == b"duplicate"), []).append(r.value)
    originals = {(k, v) for (k, dup), vs in values.items() if not dup for v in vs}
    assert all((k, v) in originals for (k, dup), vs in values.items() if dup for v in vs)


@pytest.mark.parametrize("successor_client", ["kafka-python", "librdkafka"])
def test_a_zombie_producer_is_fenced_when_the_next_attempt_starts(kafka_bootstrap_servers, topic, client, successor_client):
    """Whichever client the zombie and the next attempt use: the fence is the broker's."""
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap_servers)
    KafkaResource(bootstrap_servers=kafka_bootstrap_servers).ensure_topic(topic)

    def publisher(client):
        kind = LibrdkafkaPublisher if client == "librdkafka" else KafkaPublisher
        return kind(settings, topic, [], checkpoint_topic=DEFAULT_CHECKPOINT_TOPIC, transactional_id=transactional_id(topic), delivery_timeout_s=10)

    zombie = publisher(client)
    zombie.send(b"k", b'{"n": 1}', None)
    zombie.commit(b"zombie-test", b"{}", 10)
    zombie.send(b"k", b'{"n": 2}', None)  # in flight when the next attempt starts
    successor = publisher(successor_client)
    with pytest.raises(ProducerFenced, match="fenced by a newer producer"):
        zombie.send(b"k", b'{"n": 3}', None)
        zombie.commit(b"zombie-test", b"{}", 10)
    zombie.close(1)
    successor.send(b"k", b'{"n": 4}', None)
    successor.commit(b"zombie-test", b"{}", 10)
    successor.close(5)
    assert [json.loads(r.value)["n"] for r in read_committed(kafka_bootstrap_servers, topic, settle_s=1)] == [1, 4]


# The stop line every stopped replay logs, with its counts as the progress lines say them.
STOP_LINE = re.compile(r"replay of (\S+) stopped: (\d+)/(\d+) delivered")


def stop_cli_replay(process: subprocess.Popen, how: str) -> None:
    """Stop a ``cli_replay`` as people do: Ctrl-C in its terminal (SIGINT to the whole
    foreground process group: the launcher and its step process), or SIGTERM to the launcher."""
    if how == "ctrl-c":
        os.killpg(process.pid, signal.SIGINT)
    else:
        os.kill(process.pid, signal.SIGTERM)


def failure_messages(result) -> list[str]:
    return [e.event_specific_data.error.message for e in result.all_events if e.event_type_value == "STEP_FAILURE"]


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_a_stopped_command_line_replay_reports_what_it_delivered_and_going_on_needs_a_choice(
    prepared, kafka_bootstrap_servers, topic, tmp_path, dagster_instance, how
):
    """Every stop reports: the stop line's count is what a read_committed consumer finds, and
    the checkpoint says stopped there. Then a launch that neither resumes nor restarts fails,
    sending nothing; resume completes the day with every row once, restart replays it whole."""
    rows = day_rows(prepared)
    home = tmp_path / "home"
    process = cli_replay(
        prepared, kafka_bootstrap_servers, home, topic=topic, pacing="fixed", interval_ms=10, terminal=how == "ctrl-c"
    )
    try:
        wait_for(lambda: (c := checkpoint_of(kafka_bootstrap_servers, topic)) and c.next_row >= 400, 120,
                 "400 committed rows", details=lambda: replay_logs(home))
        stop_cli_replay(process, how)
        process.wait(90)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
    # The run's own log, as the UI shows it. (On the terminal, Dagster's mirror of the step's
    # output, a `tail` in the same process group, dies with Ctrl-C itself: the step writes its
    # stop line on the terminal directly.)
    with DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
        [run] = instance.get_runs()
        logged = [entry.user_message for entry in instance.all_logs(run.run_id)]
        failed_step = [e for e in instance.all_logs(run.run_id, of_type=DagsterEventType.STEP_FAILURE)]
        observed = [
            e.dagster_event.event_specific_data.asset_observation
            for e in instance.all_logs(run.run_id, of_type=DagsterEventType.ASSET_OBSERVATION)
        ]
    stops = [m for m in logged if STOP_LINE.search(m)]
    assert len(stops) == 1, "expected one stop line in the run's log\n" + "\n".join(logged[-30:]) + replay_logs(home)
    assert [e.step_key for e in failed_step] == ["click_data"]
    day, delivered, total = STOP_LINE.search(stops[0]).groups()
    delivered, total = int(delivered), int(total)
    [observation] = observed  # the stop's figures, as the UI shows them on the asset
    assert observation.metadata["messages"].value == delivered
    assert (day, total) == (DAY, rows.height) and 0 < delivered < total, stops
    committed = read_committed(kafka_bootstrap_servers, topic, settle_s=1)
    assert len(committed) == delivered
    if how == "ctrl-c":  # and the person who pressed it reads the same line on the terminal
        on_screen = wait_for(lambda: STOP_LINE.search(replay_logs(home, tail_chars=20_000)), 10, "the stop line on the terminal",
                             details=lambda: replay_logs(home))
        assert on_screen.groups() == (day, str(delivered), str(total))
    stopped = checkpoint_of(kafka_bootstrap_servers, topic)
    assert (stopped.status, stopped.next_row) == (ReplayStatus.STOPPED, delivered)

    kafka = KafkaResource(bootstrap_servers=kafka_bootstrap_servers)
    before = kafka.end_offsets(topic)
    plain = materialize_replay(prepared, kafka, instance=dagster_instance, topic=topic, pacing="max")
    assert not plain.success
    [refusal] = failure_messages(plain)
    assert f"run {stopped.run_id[:8]}" in refusal and f"at row {delivered}/{total}" in refusal
    assert "resume: true" in refusal and "restart: true" in refusal
    assert kafka.end_offsets(topic) == before, "the refused launch sent something"

    choice = "resume" if how == "ctrl-c" else "restart"
    again = materialize_replay(prepared, kafka, instance=dagster_instance, topic=topic, pacing="max", **{choice: True})
    assert again.success
    records = read_committed(kafka_bootstrap_servers, topic, settle_s=1)
    if choice == "resume":
        assert_every_row_exactly_once(records, rows)
    else:  # the whole day again, each row once from the restarted replay
        assert len(records) == delivered + rows.height
        assert_every_row_exactly_once([r for r in records if dict(r.headers)["dagster_run_id"].decode() == again.run_id], rows)
    assert checkpoint_of(kafka_bootstrap_servers, topic).status == ReplayStatus.FINISHED


class _SignalAt:
    """The client's producer, with a signal (KeyboardInterrupt) landing when ``method`` is
    called once: where an interrupt can strike inside the publisher's commit."""

    def __init__(self, producer, method: str, before: bool):
        self._producer, self._method, self._before = producer, method, before

    def __getattr__(self, name):
        attribute = getattr(self._producer, name)
        if name != self._method:
            return attribute

        def interrupted(*args, **kwargs):
            self._method = None  # once
            if not self._before:
                attribute(*args, **kwargs)
            raise KeyboardInterrupt

        return interrupted


@pytest.mark.parametrize("lands", ["before the commit", "after the commit"])
def test_an_interrupted_commit_is_resolved_to_what_the_broker_did(kafka_bootstrap_servers, topic, client, lands):
    """A signal inside ``commit``: ``resolve_commit`` says whether the broker committed, and
    the producer goes on (to abort what followed and record the stop), whichever client."""
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap_servers)
    KafkaResource(bootstrap_servers=kafka_bootstrap_servers).ensure_topic(topic)
    kind = LibrdkafkaPublisher if client == "librdkafka" else KafkaPublisher
    publisher = kind(settings, topic, [], checkpoint_topic=DEFAULT_CHECKPOINT_TOPIC, transactional_id=transactional_id(topic), delivery_timeout_s=10)
    real = publisher.producer
    try:
        publisher.send(b"k", b'{"n": 1}', None)
        publisher.commit(b"interrupt-test", b"{}", 10)
        publisher.send(b"k", b'{"n": 2}', None)
        if lands == "after the commit":  # the broker committed; the next transaction had not begun
            publisher.producer = _SignalAt(real, "begin_transaction", before=False)
        elif client == "librdkafka":  # commit_transaction not called yet
            publisher.producer = _SignalAt(real, "commit_transaction", before=True)
        else:  # kafka-python: the commit not begun yet
            real._transaction_manager = _SignalAt(real._transaction_manager, "begin_commit", before=True)
        with pytest.raises(KeyboardInterrupt):
            publisher.commit(b"interrupt-test", b"{}", 10)
        publisher.producer = real
        if client == "kafka-python":
            real._transaction_manager = getattr(real._transaction_manager, "_producer", real._transaction_manager)
        committed = publisher.resolve_commit(10)
        # librdkafka: commit_transaction was about to be called, so resolving completes it.
        assert committed == (lands == "after the commit" or client == "librdkafka")
        publisher.send(b"k", b'{"n": 3}', None)
        publisher.abort(10)
        publisher.commit(b"interrupt-test", b"{}", 10)  # the stop checkpoint
    finally:
        publisher.producer = real
        publisher.close(5)
    expected = [1, 2] if committed else [1]
    assert [json.loads(r.value)["n"] for r in read_committed(kafka_bootstrap_servers, topic, settle_s=1)] == expected


def test_a_second_replay_into_the_topic_waits_for_the_first_and_never_interleaves(prepared, kafka_bootstrap_servers, topic, tmp_path, client):
    first = cli_replay(prepared, kafka_bootstrap_servers, tmp_path / "a", DAY, client=client, topic=topic, pacing="fixed", interval_ms=20, limit=1500)
    wait_for(lambda: checkpoint_of(kafka_bootstrap_servers, topic, DAY), 60, "the first replay's claim")
    second = cli_replay(prepared, kafka_bootstrap_servers, tmp_path / "b", OTHER_DAY, client=client, topic=topic, pacing="max", limit=1500)
    # The second one waits while the first (30 s of schedule) holds the topic.
    wait_for(lambda: "waiting for the topic" in "".join(p.read_text() for p in (tmp_path / "b").glob("replay-*.log")), 60, "the second replay to wait")
    assert first.poll() is None, "the first replay ended before the second one started: nothing was tested"
    assert first.wait(120) == 0 and second.wait(180) == 0
    records = sorted(read_committed(kafka_bootstrap_servers, topic), key=lambda r: (r.partition, r.offset))
    for partition in {r.partition for r in records}:
        days = [dict(r.headers)["source_day"].decode() for r in records if r.partition == partition]
        # One run of each day per partition: the second replay started after the first ended.
        assert days == sorted(days), f"partition {partition}: the two days interleave"
    log = next((tmp_path / "b").glob("replay-*.log")).read_text()
    assert "is being written by replay" in log and f"of {DAY}" in log


def test_a_replay_following_another_waits_without_fencing_it_and_starts_after_the_recorded_gap(
    prepared, kafka_bootstrap_servers, topic, tmp_path
):
    """The live feed's next day (``after_run``), launched before the day before even claimed the
    topic: it starts no producer until that replay finished (one would fence it), then sends its
    first page view one interval (its own pacing: 2 s, a recorded gap at speed 1) after the other's
    last one, never before. How close to the interval it comes (1-1.7 s of takeover here when
    quiet, 5 s with the suite's workers loading the machine) is a figure, reported in the
    materialization's boundary_gap_s, not asserted: the machine is shared."""
    home = tmp_path / "home"  # one instance: the follower looks the first run up in it
    first = cli_replay(
        prepared, kafka_bootstrap_servers, home, DAY, topic=topic, pacing="fixed", interval_ms=20, limit=400
    )

    def first_run_id():
        if first.poll() is not None:
            raise AssertionError(f"the first replay exited ({first.returncode})\n{replay_logs(home)}")
        with DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
            runs = instance.get_runs()
        return runs[0].run_id if runs else None

    after_run = wait_for(first_run_id, 90, "the first replay's run", details=lambda: replay_logs(home))
    second = cli_replay(
        prepared, kafka_bootstrap_servers, home, OTHER_DAY, topic=topic, pacing="fixed", interval_ms=2000, limit=5,
        after_run=after_run,
    )
    assert first.wait(240) == 0, replay_logs(home)
    assert second.wait(240) == 0, replay_logs(home)
    records = read_committed(kafka_bootstrap_servers, topic)
    by_day = defaultdict(list)
    for record in records:
        by_day[dict(record.headers)["source_day"].decode()].append(json.loads(record.value)["timestamp"])
    first_day = [r for r in records if dict(r.headers)["source_day"] == DAY.encode()]
    assert_every_row_exactly_once(first_day, day_rows(prepared).head(400))
    assert len(by_day[OTHER_DAY]) == 5
    gap_s = (min(by_day[OTHER_DAY]) - max(by_day[DAY])) / 1000
    # After the first day's last page view (never interleaved), having waited for its interval:
    # at least half of it, allowing for the first day's last send being late on a loaded machine.
    assert gap_s >= 2.0 / 2, f"the second day's first page view came {gap_s} s after the first's last"


def test_the_watchdog_fails_a_killed_command_line_run_and_leaves_a_live_one_alone(prepared, kafka_bootstrap_servers, tmp_path):
    """kill -9 of a CLI run's process group leaves the run STARTED (nothing is left to end it):
    replay_watchdog, evaluated as the daemon does, marks it failed; a live run stays started."""
    home = tmp_path / "home"
    home.mkdir()
    # Create the instance's storage before two processes race to create it on first use.
    instance = DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
    live_topic, killed_topic = f"live-{uuid.uuid4().hex[:8]}", f"killed-{uuid.uuid4().hex[:8]}"
    live = cli_replay(prepared, kafka_bootstrap_servers, home, topic=live_topic, pacing="fixed", interval_ms=100)
    killed = None
    try:
        live_run = first_commit_of(live, kafka_bootstrap_servers, live_topic, home).run_id
        killed = cli_replay(prepared, kafka_bootstrap_servers, home, topic=killed_topic, pacing="fixed", interval_ms=100)
        killed_run = first_commit_of(killed, kafka_bootstrap_servers, killed_topic, home).run_id
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait(10)

        # The sensor's lease: 5 + 10 s; the live replay renews its checkpoint every 5 s at most.
        kafka = KafkaResource(bootstrap_servers=kafka_bootstrap_servers, delivery_timeout_s=5)
        ticks = []

        def killed_run_failed():
            ticks.append(replay_watchdog(build_sensor_context(instance=instance, resources={"kafka": kafka})))
            return instance.get_run_by_id(killed_run).status == DagsterRunStatus.FAILURE

        # Killed in the middle of a commit, its open transaction hides the live replay's newer
        # checkpoints until the broker aborts it (transaction timeout, 60 s): the watchdog
        # judges nothing meanwhile.
        wait_for(killed_run_failed, 180, "the watchdog to fail the killed run", every_s=2)
        assert instance.get_run_by_id(live_run).status == DagsterRunStatus.STARTED, ticks
        assert live.poll() is None
        [failure] = instance.get_records_for_run(killed_run, of_type=DagsterEventType.RUN_FAILURE).records
        message = failure.event_log_entry.dagster_event.message
        assert "replay_watchdog: its replay has committed nothing for" in message and "re-execute the run" in message
        # Run from a command line: not re-executed behind the back of the person who ran it.
        assert instance.get_run_by_id(killed_run).tags[WILL_RETRY_TAG] == "false"
        assert "marked failed: " + killed_run[:8] in ticks[-1].skip_message
    finally:
        for process in (live, killed):
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        # What a resume would do first: fence the killed replay, aborting any transaction it left
        # open, which would hide later checkpoints from the next tests for a minute.
        KafkaPublisher(
            KafkaSettings(bootstrap_servers=kafka_bootstrap_servers), killed_topic, [],
            checkpoint_topic=DEFAULT_CHECKPOINT_TOPIC, transactional_id=transactional_id(killed_topic),
        ).close()


def test_checkpoints_hidden_by_a_dead_transaction_are_not_mistaken_for_the_latest(kafka_bootstrap_servers, topic):
    """A replay killed mid-commit leaves its transaction open: read_committed readers see no
    checkpoint after it until the broker aborts it. A reader that needs the latest view says so."""
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap_servers)
    checkpoint_topic = topic  # one partition, as the shared one, which must not be held back
    ensure_topic(settings, checkpoint_topic, partitions=1, replication_factor=1, create=True)
    first = Checkpoint("t", DAY, "R", "R", 10, 100, ReplayStatus.RUNNING, 1)
    # (the publishers' own topic: the same one, nothing is sent to it)
    dead = KafkaPublisher(settings, topic, [], checkpoint_topic=checkpoint_topic, transactional_id=f"{topic}-dead")
    live = KafkaPublisher(settings, topic, [], checkpoint_topic=checkpoint_topic, transactional_id=f"{topic}-live")
    try:
        live.commit(first.key, first.to_bytes(), 10)
        dead.producer.send(checkpoint_topic, key=b"dead", value=b"{}")  # never committed: "killed"
        dead.producer.flush(10)
        later = Checkpoint("u", DAY, "U", "U", 20, 100, ReplayStatus.RUNNING, 2)
        live.commit(later.key, later.to_bytes(), 10)
        # Without the requirement: the view stops at the open transaction (the later one hidden).
        assert [c.next_row for c in read_checkpoints(settings, checkpoint_topic)] == [10]
        with pytest.raises(CheckpointsIncomplete, match="transaction left open"):
            read_checkpoints(settings, checkpoint_topic, complete_within_s=1)
        dead.abort(10)  # what the broker does at the transaction timeout, or the next attempt at once
        assert sorted(c.next_row for c in read_checkpoints(settings, checkpoint_topic, complete_within_s=10)) == [10, 20]
    finally:
        dead.close(1)
        live.close(1)


def test_at_least_once_delivers_every_row_without_transactions(prepared, kafka_bootstrap_servers, topic, client):
    rows = day_rows(prepared)
    result = materialize_replay(prepared, KafkaResource(bootstrap_servers=kafka_bootstrap_servers, client=client), topic=topic, pacing="max", delivery="at_least_once")
    assert result.success
    assert_every_row_exactly_once(read_committed(kafka_bootstrap_servers, topic), rows)
    [mat] = result.asset_materializations_for_node("click_data")
    assert mat.metadata["messages"].value == rows.height
    assert checkpoint_of(kafka_bootstrap_servers, topic).status == ReplayStatus.FINISHED
    [check] = result.get_asset_check_evaluations()
    assert check.passed and check.metadata["messages_found"].value == rows.height


@pytest.fixture
def own_broker(local_kafka, tmp_path):
    """A broker of this test's own, to kill or pause. Its controller is the broker itself: with
    Kafka's 9 s broker session, a pause of 9 s or more makes it fence itself when it wakes up,
    and its partitions stay leaderless for as long as re-registering takes (18 s and more on a
    loaded machine, long enough to expire messages sent before the pause). A broker paused on a
    real cluster hands its partitions to another replica instead; a 60 s session keeps these
    tests about the client's patience, not about a one-node cluster's fencing."""
    broker = local_kafka.start_broker(tmp_path / "broker", local_kafka.free_port(), timeout_s=90, cache_dir=local_kafka.REPO_ROOT / ".kafka",
                                      broker_properties={"broker.session.timeout.ms": "60000"})
    yield broker
    with_signal = signal.SIGCONT
    try:
        os.kill(broker.pid, with_signal)
    except ProcessLookupError:
        pass
    broker.stop()


def replay_in_thread(prepared, kafka: KafkaResource, instance, **config):
    """``materialize_replay`` in a thread, to fault the broker under it: (thread, outcome)."""
    outcome = {}
    thread = threading.Thread(
        target=lambda: outcome.setdefault("result", materialize_replay(prepared, kafka, instance=instance, **config))
    )
    thread.start()
    return thread, outcome


def test_a_broker_killed_mid_replay_fails_the_run_within_the_bound_with_the_projects_message(prepared, own_broker, topic, dagster_instance, client):
    kafka = KafkaResource(bootstrap_servers=own_broker.bootstrap_servers, connect_timeout_s=5, delivery_timeout_s=5, client=client)
    thread, outcome = replay_in_thread(prepared, kafka, dagster_instance, topic=topic, pacing="fixed", interval_ms=5)
    wait_for(lambda: (c := checkpoint_of(own_broker.bootstrap_servers, topic)) and c.next_row >= 200, 60, "200 committed rows")
    killed = time.monotonic()
    os.kill(own_broker.pid, signal.SIGKILL)
    thread.join(180)
    failed_after_s = time.monotonic() - killed
    assert not thread.is_alive(), "the replay hangs with its broker dead"
    result = outcome["result"]
    assert not result.success
    logged = [entry.user_message for entry in dagster_instance.all_logs(result.run_id)]
    # One attempt: the cluster did not answer again, so no retry was promised or made.
    assert not any("retrying in" in m for m in logged), logged
    [final] = failure_messages(result)
    assert f"replay of {DAY} into {topic!r} at {own_broker.bootstrap_servers} failed" in final
    assert "messages delivered by this attempt" in final and "committed through row" in final
    assert f"Not retried: Kafka at {own_broker.bootstrap_servers}" in final and "Re-execute the run" in final
    assert "Timeout waiting for future" not in final
    # The documented bound is connect_timeout_s + delivery_timeout_s (10 s): checked loosely.
    assert failed_after_s < 2 * (5 + 5), f"failed {failed_after_s:.1f} s after the kill"


def test_a_broker_paused_for_less_than_the_delivery_timeout_fails_nothing_and_shows_in_the_latency(prepared, own_broker, topic, dagster_instance, client):
    """12 s: longer than a request used to be allowed (half the delivery timeout, or the connect
    timeout), shorter than delivery_timeout_s: the attempt waits it out."""
    rows = day_rows(prepared).head(1500)
    kafka = KafkaResource(bootstrap_servers=own_broker.bootstrap_servers, connect_timeout_s=10, delivery_timeout_s=30, client=client)
    thread, outcome = replay_in_thread(prepared, kafka, dagster_instance, topic=topic, pacing="fixed", interval_ms=5, limit=1500)
    wait_for(lambda: (c := checkpoint_of(own_broker.bootstrap_servers, topic)) and c.next_row >= 200, 60, "200 committed rows")
    os.kill(own_broker.pid, signal.SIGSTOP)
    time.sleep(12)  # the fault itself: a 12 s stall of the broker
    os.kill(own_broker.pid, signal.SIGCONT)
    thread.join(180)
    result = outcome["result"]
    assert result.success
    [mat] = result.asset_materializations_for_node("click_data")
    assert (mat.metadata["attempts"].value, mat.metadata["stall_s"].value) == (1, 0)
    assert mat.metadata["delivery_latency_max_ms"].value >= 11_000
    [check] = result.get_asset_check_evaluations()
    assert check.passed and check.metadata["duplicates"].value == 0
    assert_every_row_exactly_once(read_committed(own_broker.bootstrap_servers, topic), rows)


def test_a_run_retried_after_a_longer_pause_reports_every_attempt_and_the_stall(prepared, own_broker, topic, dagster_instance, client):
    """Paused for longer than delivery_timeout_s (5 s), back within connect_timeout_s after the
    failure: the step is retried and resumes; the materialization covers both attempts."""
    rows = day_rows(prepared).head(1500)
    kafka = KafkaResource(bootstrap_servers=own_broker.bootstrap_servers, connect_timeout_s=20, delivery_timeout_s=5, client=client)
    thread, outcome = replay_in_thread(prepared, kafka, dagster_instance, topic=topic, pacing="fixed", interval_ms=5, limit=1500)
    wait_for(lambda: (c := checkpoint_of(own_broker.bootstrap_servers, topic)) and c.next_row >= 200, 60, "200 committed rows")
    os.kill(own_broker.pid, signal.SIGSTOP)
    time.sleep(9)  # the fault itself: the attempt fails after 5 s, the cluster answers again at 9 s
    os.kill(own_broker.pid, signal.SIGCONT)
    thread.join(240)
    result = outcome["result"]
    assert result.success, failure_messages(result)
    logged = [entry.user_message for entry in dagster_instance.all_logs(result.run_id)]
    [retry] = [m for m in logged if "retrying in" in m]
    assert "The cluster answers: retrying in 5 s as attempt 2 of 3, from row" in retry
    [mat] = result.asset_materializations_for_node("click_data")
    stall_s = mat.metadata["stall_s"].value
    assert mat.metadata["attempts"].value == 2
    assert stall_s >= 5 + 5  # at least the delivery timeout and the retry's wait
    assert mat.metadata["delivery_latency_max_ms"].value >= stall_s * 1000
    [check] = result.get_asset_check_evaluations()
    assert check.passed and check.metadata["duplicates"].value == 0
    assert_every_row_exactly_once(read_committed(own_broker.bootstrap_servers, topic), rows)
