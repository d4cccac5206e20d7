"""``clickstream-tail`` against a real broker, run as the subprocess a person would run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from typing import Iterator

import pytest
from kafka import KafkaProducer

from clickstream_dagster.encoding import encode_message, replay_headers
from clickstream_dagster_tests.kafka_fixtures import REPO_ROOT

pytestmark = pytest.mark.integration

DEADLINE_S = 60.0
REPLAY_NS = 1_764_312_345_678_000_000


def _events(n: int, tag: str) -> list[dict]:
    return [
        {
            "original_timestamp": 1330560000 + 37 * i,
            "userId": f"{uuid.uuid5(uuid.NAMESPACE_URL, f'{tag}-{i % 7}')}".upper(),
            "ip": f"10.0.{i % 5}.{i}",
            "productId": None if i % 3 == 2 else f"VD{55179433 + i}",
            "userAgent": f"Mozilla/5.0 (test {tag} {i})",
        }
        for i in range(n)
    ]


@pytest.fixture
def producer(kafka_bootstrap_servers: str) -> Iterator[KafkaProducer]:
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap_servers, acks="all", linger_ms=5)
    try:
        yield producer
    finally:
        producer.close(timeout=10)


def _produce(producer: KafkaProducer, topic: str, messages: list[tuple]) -> list[tuple[int, int]]:
    """Send (key, value, headers); returns each message's (partition, offset)."""
    futures = [producer.send(topic, key=k, value=v, headers=h) for k, v, h in messages]
    producer.flush(timeout=30)
    return [(m.partition, m.offset) for m in (f.get(timeout=30) for f in futures)]


def _replay_messages(events: list[dict], run_id: str) -> list[tuple[bytes, bytes, list]]:
    """Like the replay: keyed by userId, both value formats, the replay's headers."""
    return [
        (
            event["userId"].encode(),
            encode_message(event, "json" if i % 2 == 0 else "quix", REPLAY_NS + i * 1_000_000),
            replay_headers("2012-03-01", run_id),
        )
        for i, event in enumerate(events)
    ]


def _tail_command(servers: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "clickstream_dagster.tail", "--bootstrap-servers", servers, *args]


def _env() -> dict[str, str]:
    # The test broker is plain: do not inherit a developer's security settings.
    ignored = ("KAFKA_SASL", "KAFKA_SSL", "KAFKA_SECURITY")
    return {k: v for k, v in os.environ.items() if not k.startswith(ignored)}


def _run_tail(servers: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        _tail_command(servers, *args),
        capture_output=True, text=True, timeout=DEADLINE_S + 30, env=_env(), cwd=REPO_ROOT,
    )


class _Tail:
    """A running tail whose output is read on threads, so tests can poll it with deadlines."""

    def __init__(self, servers: str, *args: str, stdout=subprocess.PIPE):
        self.process = subprocess.Popen(
            _tail_command(servers, *args),
            stdout=stdout, stderr=subprocess.PIPE, text=True, env=_env(), cwd=REPO_ROOT,
        )
        self.stdout_lines: list[str] = []
        self.stderr_lines: list[str] = []
        self._readers = [self._reader(self.process.stderr, self.stderr_lines)]
        if self.process.stdout is not None:
            self._readers.append(self._reader(self.process.stdout, self.stdout_lines))

    @staticmethod
    def _reader(stream, lines: list[str]) -> threading.Thread:
        def read() -> None:
            for line in stream:
                lines.append(line)

        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        return thread

    def _wait(self, done, what: str, deadline_s: float) -> None:
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            if done():
                return
            if self.process.poll() is not None and not any(t.is_alive() for t in self._readers):
                if done():
                    return
                pytest.fail(f"tail exited ({self.process.returncode}) before {what}: {self.stderr_lines}")
            time.sleep(0.05)
        pytest.fail(f"no {what} within {deadline_s:.0f}s: {self.stderr_lines}")

    def wait_for_stderr(self, text: str, deadline_s: float = DEADLINE_S) -> None:
        self._wait(lambda: any(text in line for line in self.stderr_lines), f"{text!r} on stderr", deadline_s)

    def wait_for_stdout_lines(self, count: int, deadline_s: float = DEADLINE_S) -> None:
        self._wait(lambda: len(self.stdout_lines) >= count, f"{count} lines on stdout", deadline_s)

    def finish(self, timeout_s: float = DEADLINE_S) -> tuple[int, str, str]:
        returncode = self.process.wait(timeout=timeout_s)
        for reader in self._readers:
            reader.join(timeout=10)
        return returncode, "".join(self.stdout_lines), "".join(self.stderr_lines)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        for reader in self._readers:
            reader.join(timeout=10)
        for stream in (self.process.stdout, self.process.stderr):
            if stream:
                stream.close()


@pytest.fixture
def tails() -> Iterator[list[_Tail]]:
    """Tails started by a test; none outlives it."""
    started: list[_Tail] = []
    yield started
    for tail in started:
        tail.kill()


def _check_json_lines(stdout: str, messages: list, positions: list[tuple[int, int]]) -> None:
    records = [json.loads(line) for line in stdout.splitlines()]
    by_position = {(r["partition"], r["offset"]): r for r in records}
    assert len(records) == len(by_position) == len(messages)
    assert set(by_position) == set(positions)
    for (key, value, headers), position in zip(messages, positions):
        record = by_position[position]
        assert record["key"] == key.decode()
        assert record["headers"] == {name: data.decode() for name, data in headers}
        assert record["value"] == json.loads(value)


def test_from_beginning_prints_every_message_as_json(kafka_bootstrap_servers, kafka_topic, producer) -> None:
    messages = _replay_messages(_events(40, "beginning"), run_id="run-beginning")
    positions = _produce(producer, kafka_topic, messages)
    assert len({p for p, _ in positions}) > 1  # spread over several partitions

    result = _run_tail(
        kafka_bootstrap_servers, "--topic", kafka_topic, "--from-beginning",
        "--limit", str(len(messages)), "--format", "json", "--timeout", str(DEADLINE_S),
    )
    assert result.returncode == 0, result.stderr
    _check_json_lines(result.stdout, messages, positions)
    assert f"following {kafka_topic} from the beginning" in result.stderr
    assert "40 messages" in result.stderr and "limit reached" in result.stderr

    # fields of both formats, null productId included, come through unchanged
    values = [json.loads(line)["value"] for line in result.stdout.splitlines()]
    assert any(v.get("productId", "x") is None for v in values)
    assert any(v.get("V", {}).get("StringValues", {}).get("productId") == [None] for v in values)


def test_from_now_prints_exactly_the_new_messages(
    kafka_bootstrap_servers, kafka_topic, producer, tails
) -> None:
    old = _replay_messages(_events(10, "old"), run_id="run-old")
    _produce(producer, kafka_topic, old)

    tail = _Tail(kafka_bootstrap_servers, "--topic", kafka_topic, "--limit", "6", "--format", "json",
                 "--timeout", str(DEADLINE_S))
    tails.append(tail)
    tail.wait_for_stderr(f"following {kafka_topic} from now")

    new = _replay_messages(_events(6, "new"), run_id="run-new")
    positions = _produce(producer, kafka_topic, new)
    returncode, stdout, stderr = tail.finish()
    assert returncode == 0, stderr
    _check_json_lines(stdout, new, positions)
    assert all(json.loads(line)["headers"]["dagster_run_id"] == "run-new" for line in stdout.splitlines())


def test_aborted_records_are_hidden_unless_asked_for(kafka_bootstrap_servers, kafka_topic) -> None:
    """A replay attempt that crashed before its commit leaves aborted records: not shown by default."""
    aborted = _replay_messages(_events(5, "aborted"), run_id="run-crashed")
    committed = _replay_messages(_events(5, "committed"), run_id="run-resumed")
    producer = KafkaProducer(
        bootstrap_servers=kafka_bootstrap_servers, transactional_id=f"tail-test-{uuid.uuid4().hex[:8]}"
    )
    try:
        producer.init_transactions()
        producer.begin_transaction()
        _produce(producer, kafka_topic, aborted)
        producer.abort_transaction()
        producer.begin_transaction()
        positions = _produce(producer, kafka_topic, committed)
        producer.commit_transaction()
    finally:
        producer.close(timeout=10)

    # In every partition the aborted records come first: shown, they would be among the first five.
    result = _run_tail(kafka_bootstrap_servers, "--topic", kafka_topic, "--from-beginning", "--format", "json",
                       "--limit", "5", "--timeout", str(DEADLINE_S))
    assert result.returncode == 0, result.stderr
    _check_json_lines(result.stdout, committed, positions)

    everything = _run_tail(kafka_bootstrap_servers, "--topic", kafka_topic, "--from-beginning", "--format", "json",
                           "--limit", "10", "--timeout", str(DEADLINE_S), "--read-uncommitted")
    assert everything.returncode == 0, everything.stderr
    run_ids = [json.loads(line)["headers"]["dagster_run_id"] for line in everything.stdout.splitlines()]
    assert sorted(run_ids) == ["run-crashed"] * 5 + ["run-resumed"] * 5


def test_table_shows_product_and_original_time(kafka_bootstrap_servers, kafka_topic, producer) -> None:
    known = {
        "original_timestamp": 1330560000 + 3661,  # 2012-03-01 01:01:01 UTC
        "userId": "F6F8B460-4204-4C26-A32C-B93826EDCB99",
        "ip": "67.180.253.113",
        "productId": "VD55179433",
        "userAgent": "Mozilla/5.0",
    }
    no_product = known | {
        "userId": "0001BDD9-EABF-4D0D-81BD-D9EABFCD0D7D", "productId": None, "ip": "1.2.3.4",
    }
    headers = replay_headers("2012-03-01", "run-table")
    messages = [
        (known["userId"].encode(), encode_message(known, "json", REPLAY_NS), headers),
        (no_product["userId"].encode(), encode_message(no_product, "quix", REPLAY_NS), headers),
        (b"garbage-key", b"\x00 definitely not a clickstream message", []),
    ]
    positions = _produce(producer, kafka_topic, messages)

    result = _run_tail(kafka_bootstrap_servers, "--topic", kafka_topic, "--from-beginning", "--limit", "3",
                       "--timeout", str(DEADLINE_S))
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split()[:4] == ["TIME", "PART/OFFSET", "KEY", "PRODUCT"]
    assert len(rows) == 3
    by_key = {row.split()[2]: row for row in rows}

    row = by_key[known["userId"]]
    assert row.split()[1] == "{}/{}".format(*positions[0])
    assert row.split()[3:] == ["VD55179433", "67.180.253.113", "2012-03-01", "01:01:01"]
    assert row.index("VD55179433") == header.index("PRODUCT")
    assert row.index("2012-03-01 01:01:01") == header.index("ORIGINAL TIME")

    assert by_key[no_product["userId"]].split()[3:] == ["-", "1.2.3.4", "2012-03-01", "01:01:01"]
    assert "raw: \\x00 definitely not a clickstream message" in by_key["garbage-key"]


def test_missing_topic_exits_2_naming_it(kafka_bootstrap_servers) -> None:
    topic = f"no-such-topic-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    result = _run_tail(kafka_bootstrap_servers, "--topic", topic, "--connect-timeout", "10")
    assert result.returncode == 2
    assert topic in result.stderr and kafka_bootstrap_servers in result.stderr
    assert "does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert time.monotonic() - started < 30


@pytest.mark.parametrize(
    ("signum", "reason"), [(signal.SIGINT, "interrupted"), (signal.SIGTERM, "terminated")]
)
def test_ctrl_c_exits_0_with_a_summary(
    kafka_bootstrap_servers, kafka_topic, producer, tails, signum, reason
) -> None:
    tail = _Tail(kafka_bootstrap_servers, "--topic", kafka_topic, "--format", "json")
    tails.append(tail)
    tail.wait_for_stderr(f"following {kafka_topic} from now")
    _produce(producer, kafka_topic, _replay_messages(_events(2, "ctrl-c"), run_id="run-ctrl-c"))
    tail.wait_for_stdout_lines(2)  # both arrived: now interrupt
    tail.process.send_signal(signum)
    returncode, stdout, stderr = tail.finish()
    assert returncode == 0, stderr
    assert len([json.loads(line) for line in stdout.splitlines()]) == 2
    summary = stderr.strip().splitlines()[-1]
    assert "2 messages" in summary and reason in summary
    assert "Traceback" not in stderr


def test_closed_pipe_exits_quietly(kafka_bootstrap_servers, kafka_topic, producer, tails) -> None:
    read_end, write_end = os.pipe()
    try:
        tail = _Tail(kafka_bootstrap_servers, "--topic", kafka_topic, "--format", "json",
                     "--timeout", str(DEADLINE_S), stdout=write_end)
    finally:
        os.close(write_end)
    tails.append(tail)
    tail.wait_for_stderr(f"following {kafka_topic} from now")
    os.close(read_end)  # like `| head` having exited
    _produce(producer, kafka_topic, _replay_messages(_events(3, "pipe"), run_id="run-pipe"))
    returncode, _, stderr = tail.finish()
    assert returncode == 0, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr
