"""The launcher layer every local service uses (scripts/local_services.py), on small Python
processes standing in for a service: start, wait, status, down, logs, resolve."""

import os
import signal
import sys
import time

import pytest

from clickstream_dagster_tests.kafka_fixtures import load_local_kafka, load_local_services

services = load_local_services()

# A service that forks a helper (as pg_ctl or a shell wrapper would), reports both pids and
# serves until stopped; IGNORE_TERM makes it one that shuts down only when killed.
SERVICE = """
import os, signal, subprocess, sys, time
if os.environ.get("IGNORE_TERM"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print(f"service {os.getpid()} helper {helper.pid}", flush=True)
time.sleep(600)
"""


def _gone(pid: int, within_s: float = 30.0) -> bool:
    deadline = time.monotonic() + within_s
    while services.pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _reported_pids(log_path) -> tuple[int, int]:
    deadline = time.monotonic() + 30
    while "helper" not in (text := services.tail(log_path)):
        assert time.monotonic() < deadline, f"the service never reported: {text}"
        time.sleep(0.05)
    words = text.split()
    return int(words[1]), int(words[3])


def test_start_runs_the_service_in_its_own_session_with_its_log_and_pid_file(tmp_path):
    proc = services.start([sys.executable, "-c", SERVICE], tmp_path, log_file="service.log", pid_file="service.pid")
    try:
        service, helper = _reported_pids(tmp_path / "service.log")
        assert service == proc.pid == services.read_pid(tmp_path / "service.pid")
        assert os.getsid(proc.pid) == proc.pid != os.getsid(0)  # a Ctrl-C here does not reach it
        assert os.getsid(helper) == proc.pid
        assert services.runs(proc.pid, "-c", SERVICE)
        assert not services.runs(proc.pid, "kafka.Kafka")  # a recycled pid is not the service
        # down stops the whole session: the helper it forked too
        assert services.stop(proc.pid, 30, proc=proc, what="service")
        assert _gone(helper)
        assert not services.stop(proc.pid, 30, proc=proc, what="service")  # already down
    finally:
        services.stop(proc.pid, 1, proc=proc)


def test_down_kills_a_service_that_ignores_the_shutdown_signal(tmp_path, monkeypatch):
    monkeypatch.setenv("IGNORE_TERM", "1")
    proc = services.start([sys.executable, "-c", SERVICE], tmp_path, log_file="service.log")
    _, helper = _reported_pids(tmp_path / "service.log")
    assert services.stop(proc.pid, 0.5, proc=proc, what="service")
    assert proc.returncode == -signal.SIGKILL
    assert _gone(helper)


def test_a_restart_keeps_the_previous_log(tmp_path):
    (tmp_path / "service.log").write_text("the last run\n")
    proc = services.start([sys.executable, "-c", "print('this run')"], tmp_path, log_file="service.log",
                          keep_previous_log=True)
    proc.wait(30)
    assert (tmp_path / "service.log.prev").read_text() == "the last run\n"
    assert services.tail(tmp_path / "service.log") == "this run"


def test_waiting_ends_when_the_probe_answers_the_process_exits_or_time_runs_out(tmp_path):
    answers = iter(["starting", "starting", None])
    services.wait_until_answers(lambda: next(answers), 30, what="service", where="here", interval_s=0.01)

    proc = services.start([sys.executable, "-c", "raise SystemExit(3)"], tmp_path, log_file="service.log")
    with pytest.raises(services.NotAnswering, match="exited with code 3 before here became ready") as exited:
        services.wait_until_answers(lambda: "refused", 30, what="service", where="here", proc=proc, interval_s=0.01)
    assert exited.value.exit_code == 3

    with pytest.raises(services.NotAnswering, match=r"not ready after 0.05s \(last probe: refused\)") as late:
        services.wait_until_answers(lambda: "refused", 0.05, what="service", where="here", interval_s=0.01)
    assert late.value.exit_code is None


def test_a_pid_file_of_a_process_that_is_gone_reads_as_not_running(tmp_path):
    proc = services.start([sys.executable, "-c", "pass"], tmp_path, log_file="service.log", pid_file="service.pid")
    proc.wait(30)
    assert not services.runs(services.read_pid(tmp_path / "service.pid"))
    (tmp_path / "service.pid").write_text("not a pid\n")
    assert services.read_pid(tmp_path / "service.pid") is None


def test_the_log_tail_is_its_last_lines(tmp_path):
    (tmp_path / "service.log").write_text("".join(f"line {i}\n" for i in range(100)))
    assert services.tail(tmp_path / "service.log", 2) == "line 98\nline 99"
    assert "no log at" in services.tail(tmp_path / "missing.log")


def test_a_cached_classpath_is_used_while_its_jars_are_there(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "no-maven-here"))
    jar = tmp_path / "a.jar"
    jar.write_bytes(b"")
    cache = tmp_path / "cache" / "classpath.txt"
    cache.parent.mkdir()
    cache.write_text(f"{jar}\n")
    assert services.resolve_classpath(tmp_path / "pom.xml", cache, "Kafka 9") == str(jar)
    jar.unlink()  # removed from ~/.m2: resolved again, which needs Maven
    with pytest.raises(services.ServiceError, match="mvn .* needed once to resolve the Kafka 9 jars"):
        services.resolve_classpath(tmp_path / "pom.xml", cache, "Kafka 9")


def test_an_artifact_lives_where_maven_puts_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MAVEN_REPO_LOCAL", str(tmp_path))
    assert services.artifact_path("io.apicurio:apicurio-registry-app:2.6.13.Final:zip:all") == (
        tmp_path / "io" / "apicurio" / "apicurio-registry-app" / "2.6.13.Final"
        / "apicurio-registry-app-2.6.13.Final-all.zip"
    )


def test_the_kafka_script_and_the_layer_share_one_error_class():
    assert load_local_kafka().LocalKafkaError is services.ServiceError
