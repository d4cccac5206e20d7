"""Replays and clickstream-tail against a real secured broker: SASL_SSL (SCRAM-SHA-512 and
-256), SASL_PLAINTEXT (PLAIN), SSL with a client certificate, and Kafka's ACLs.

Every replay runs the ``click_data`` asset through Dagster on a temporary instance and is read
back in full by ``clickstream-tail`` (the subprocess a person runs) with the same user. Every
refusal must say why within seconds: the mechanism and user of a failed login (never the
password), TLS verification, a protocol mismatch, the missing ACL.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter

import polars as pl
import pytest
from dagster import materialize

from clickstream_dagster.assets import prepare, replay
from clickstream_dagster.generator import write_log
from clickstream_dagster.resources.kafka import KafkaResource
from clickstream_dagster.resources.schema_registry import SchemaRegistryResource
from clickstream_dagster.resources.log_file import ClickstreamLogFile
from clickstream_dagster.resources.parquet import DailyParquetIOManager
from clickstream_dagster_tests.kafka_fixtures import REPO_ROOT
from clickstream_dagster_tests.secured_kafka_fixtures import LOGINS

pytestmark = pytest.mark.integration
DAY = "2012-03-03"
SASL_LOGINS = [login for login, (_, mechanism) in LOGINS.items() if mechanism]
TLS_LOGINS = ["sasl_ssl-scram512", "ssl-client-cert"]
FAST_S = 10.0  # a refused login or a missing ACL fails within this


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A generated log, prepared into daily Parquet once for the module."""
    root = tmp_path_factory.mktemp("secured")
    write_log(root / "clickstream.csv", rows=6000, seed=11)
    res = {
        "clickstream_log": ClickstreamLogFile(path=str(root / "clickstream.csv")),
        "parquet_io_manager": DailyParquetIOManager(base_dir=str(root / "parquet")),
    }
    assert materialize([prepare.clickstream_events], resources=res, partition_key=DAY).success
    return res


def kafka_resource(kafka_config: dict, client: str) -> KafkaResource:
    assert client == "kafka-python", f"no {client} branch yet"  # the one client the project has
    return KafkaResource(**kafka_config)


def run_replay(prepared, instance, kafka: KafkaResource, *, check: bool = False, **config):
    """The replay asset (and with ``check`` its asset check, which reads the replay back with
    the same credentials) on a temporary instance."""
    started = time.monotonic()
    steps = [replay.click_data, replay.delivered_exactly_once] if check else [replay.click_data]
    result = materialize(
        [prepare.clickstream_events, *steps],
        selection=steps,
        resources=prepared | {"kafka": kafka, "schema_registry": SchemaRegistryResource()},
        instance=instance,
        partition_key=DAY,
        run_config={"ops": {"click_data": {"config": {"pacing": "max", "progress_interval_s": 0.5} | config}}},
        raise_on_error=False,
    )
    return result, time.monotonic() - started


def failure_message(result) -> str:
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    return failure.event_specific_data.error.message


def run_tail(env: dict[str, str], *args: str, timeout_s: float = 90) -> subprocess.CompletedProcess:
    """clickstream-tail as a person runs it, with only these KAFKA_* variables set."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KAFKA_")}
    return subprocess.run(
        [sys.executable, "-m", "clickstream_dagster.tail", *args],
        env=clean | {k: v for k, v in env.items() if v}, capture_output=True, text=True, timeout=timeout_s, cwd=REPO_ROOT,
    )


def read_back(env: dict[str, str], topic: str) -> list[dict]:
    """Every message of the topic, through clickstream-tail (stops after 5 s without one)."""
    result = run_tail(env, "--topic", topic, "--from-beginning", "--format", "json", "--timeout", "5")
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def day_rows(prepared) -> pl.DataFrame:
    return pl.read_parquet(f"{prepared['parquet_io_manager'].base_dir}/clickstream_events/{DAY}.parquet")


def assert_every_row_once(records: list[dict], rows: pl.DataFrame) -> None:
    fields = rows.columns
    sent = Counter(tuple(r["value"][f] for f in fields) for r in records)
    assert sent == Counter(rows.select(fields).iter_rows())
    assert all(r["key"] == r["value"]["userId"] for r in records)


@pytest.mark.parametrize("delivery", ["exactly_once", "at_least_once"])
@pytest.mark.parametrize("login", list(LOGINS))
def test_a_replay_through_each_login_is_read_back_in_full_by_the_tail(
    prepared, secured_kafka, secured_topic, dagster_instance, client, login, delivery
):
    # eo-replayer holds exactly the README's exactly_once ACLs (a superset of at_least_once's).
    kafka = kafka_resource(secured_kafka.resource_config(login, "eo-replayer"), client)
    result, _ = run_replay(prepared, dagster_instance, kafka, topic=secured_topic, delivery=delivery)
    assert result.success, failure_message(result)
    rows = day_rows(prepared)
    [mat] = result.asset_materializations_for_node("click_data")
    assert mat.metadata["messages"].value == rows.height
    assert_every_row_once(read_back(secured_kafka.env(login, "reader"), secured_topic), rows)


def test_the_asset_check_reads_the_replay_back_with_the_replay_users_credentials(
    prepared, secured_kafka, secured_topic, dagster_instance, client
):
    # replayer: what `local_kafka.py up` grants, the replay's ACLs plus READ on the topic.
    kafka = kafka_resource(secured_kafka.resource_config("sasl_ssl-scram512", "replayer"), client)
    result, _ = run_replay(prepared, dagster_instance, kafka, check=True, topic=secured_topic)
    assert result.success, failure_message(result)
    [check] = result.get_asset_check_evaluations()
    assert check.passed, check.metadata
    assert check.metadata["messages_found"].value == day_rows(prepared).height


def test_the_at_least_once_acls_suffice_for_at_least_once_only(
    prepared, secured_kafka, secured_topic, dagster_instance, client
):
    kafka = kafka_resource(secured_kafka.resource_config("sasl_ssl-scram512", "alo-replayer"), client)
    result, _ = run_replay(prepared, dagster_instance, kafka, topic=secured_topic, delivery="at_least_once")
    assert result.success, failure_message(result)
    assert_every_row_once(read_back(secured_kafka.env("sasl_ssl-scram512", "reader"), secured_topic), day_rows(prepared))

    # Without rights on the transactional id, exactly_once fails naming them, having sent nothing more.
    result, took_s = run_replay(prepared, dagster_instance, kafka, topic=secured_topic, delivery="exactly_once")
    assert not result.success
    message = failure_message(result)
    assert "TransactionalId" in message and "WRITE" in message and "not authorized" in message, message
    assert "alo-replayer" in message
    assert took_s < FAST_S
    assert len(read_back(secured_kafka.env("sasl_ssl-scram512", "reader"), secured_topic)) == day_rows(prepared).height


@pytest.mark.parametrize("delivery", ["exactly_once", "at_least_once"])
def test_without_write_on_the_topic_the_replay_fails_naming_it(
    prepared, secured_kafka, secured_topic, dagster_instance, client, delivery
):
    kafka = kafka_resource(secured_kafka.resource_config("sasl_ssl-scram512", "no-write"), client)
    result, took_s = run_replay(prepared, dagster_instance, kafka, topic=secured_topic, delivery=delivery)
    assert not result.success
    message = failure_message(result)
    assert "not authorized" in message and "WRITE" in message and "no-write" in message, message
    assert secured_topic in message
    assert took_s < 60  # within delivery_timeout_s (30 s), not a hang


@pytest.mark.parametrize("login", SASL_LOGINS)
def test_a_wrong_password_fails_fast_naming_the_mechanism_and_the_user(
    prepared, secured_kafka, secured_topic, dagster_instance, client, login
):
    wrong = "not-the-password-" + "7" * 12
    config = secured_kafka.resource_config(login, "eo-replayer") | {"sasl_password": wrong}
    result, took_s = run_replay(prepared, dagster_instance, kafka_resource(config, client), topic=secured_topic)
    assert not result.success
    message = failure_message(result)
    mechanism = LOGINS[login][1]
    assert "authentication failed" in message and mechanism in message and "'eo-replayer'" in message, message
    assert wrong not in message and config["bootstrap_servers"] in message
    assert took_s < FAST_S

    started = time.monotonic()
    tail = run_tail(secured_kafka.env(login, "eo-replayer") | {"KAFKA_SASL_PASSWORD": wrong}, "--topic", secured_topic)
    assert tail.returncode == 2
    assert "authentication failed" in tail.stderr and mechanism in tail.stderr and "'eo-replayer'" in tail.stderr
    assert wrong not in tail.stderr + tail.stdout and "Traceback" not in tail.stderr
    assert time.monotonic() - started < FAST_S


@pytest.mark.parametrize("login", TLS_LOGINS)
def test_an_unknown_ca_fails_naming_tls_verification(
    prepared, secured_kafka, secured_topic, dagster_instance, client, login, tmp_path
):
    other_ca = tmp_path / "other-ca.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=some other CA",
         "-keyout", str(tmp_path / "other-ca.key"), "-out", str(other_ca)],
        check=True, capture_output=True,
    )
    config = secured_kafka.resource_config(login, "eo-replayer") | {"ssl_cafile": str(other_ca)}
    result, took_s = run_replay(prepared, dagster_instance, kafka_resource(config, client), topic=secured_topic)
    assert not result.success
    message = failure_message(result)
    assert "TLS verification" in message and str(other_ca) in message, message
    assert took_s < FAST_S

    tail = run_tail(secured_kafka.env(login, "eo-replayer") | {"KAFKA_SSL_CAFILE": str(other_ca)}, "--topic", secured_topic)
    assert tail.returncode == 2 and "TLS verification" in tail.stderr, tail.stderr


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SASL_PLAINTEXT"])
def test_a_client_without_tls_on_a_tls_listener_fails_clearly(
    prepared, secured_kafka, secured_topic, dagster_instance, client, protocol
):
    config = secured_kafka.resource_config("sasl_ssl-scram512", "eo-replayer") | {"security_protocol": protocol}
    if protocol == "PLAINTEXT":
        config = {k: v for k, v in config.items() if not k.startswith("sasl_")}
    result, took_s = run_replay(prepared, dagster_instance, kafka_resource(config, client), topic=secured_topic)
    assert not result.success
    message = failure_message(result)
    assert "expects TLS" in message and f"security_protocol {protocol}" in message, message
    assert took_s < FAST_S


def test_a_tls_client_without_a_certificate_on_the_mutual_tls_listener_fails_clearly(
    prepared, secured_kafka, secured_topic, dagster_instance, client
):
    config = secured_kafka.resource_config("ssl-client-cert", "eo-replayer")
    config = {k: v for k, v in config.items() if k not in ("ssl_certfile", "ssl_keyfile")}
    result, took_s = run_replay(prepared, dagster_instance, kafka_resource(config, client), topic=secured_topic)
    assert not result.success
    assert "client certificate" in failure_message(result), failure_message(result)
    assert took_s < FAST_S


def test_the_password_appears_in_no_storage_log_or_process_list(secured_kafka, secured_topic, tmp_path):
    """A replay through the deployment's definitions (credentials via EnvVar), run by the
    dagster CLI on a real instance (SQLite storage, compute logs), as a deployment runs it."""
    login, user, limit = "sasl_ssl-scram512", "replayer", 150  # as `local_kafka.py up` grants it
    kafka_env = secured_kafka.env(login, user)
    password = kafka_env["KAFKA_SASL_PASSWORD"]
    home = tmp_path / "dagster_home"
    home.mkdir()
    write_log(tmp_path / "clickstream.csv", rows=3000, seed=3)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAFKA_")} | {k: v for k, v in kafka_env.items() if v}
    env |= {"DAGSTER_HOME": str(home), "CLICKSTREAM_CSV": str(tmp_path / "clickstream.csv"),
            "CLICKSTREAM_STORAGE_DIR": str(tmp_path / "parquet")}
    dagster = [str(os.path.join(os.path.dirname(sys.executable), "dagster")), "asset", "materialize",
               "-m", "clickstream_dagster.definitions", "--partition", DAY]
    prepare_run = subprocess.run(dagster + ["--select", "clickstream_events"], env=env, cwd=tmp_path,
                                 capture_output=True, text=True, timeout=300)
    assert prepare_run.returncode == 0, prepare_run.stderr[-3000:]

    n = min(limit, pl.scan_parquet(tmp_path / "parquet" / "clickstream_events" / f"{DAY}.parquet").select(pl.len()).collect().item())
    config = {"ops": {"click_data": {"config": {"topic": secured_topic, "pacing": "fixed", "interval_ms": 10, "limit": limit}}},
              # One field set for this run: the environment's servers, security and credentials stay.
              "resources": {"kafka": {"config": {"topic_partitions": 2}}}}
    process = subprocess.Popen(dagster + ["--select", "click_data", "--config-json", json.dumps(config)], env=env,
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    command_lines = []
    while process.poll() is None:  # the process list, sampled all along the run
        command_lines.append(subprocess.run(["ps", "-e", "-ww", "-o", "args="], capture_output=True, text=True).stdout)
        time.sleep(0.2)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr[-3000:]
    # The credentials were used: the replay arrived.
    assert len(read_back(secured_kafka.env(login, "reader"), secured_topic)) == n

    assert any("click_data" in lines for lines in command_lines)  # the samples saw the run
    assert not [lines for lines in command_lines if password in lines]
    assert password not in prepare_run.stdout + prepare_run.stderr + stdout + stderr
    files = [path for path in home.rglob("*") if path.is_file()]
    compute_logs = [path for path in files if path.suffix in (".out", ".err", ".complete") or "compute_logs" in str(path)]
    databases = [path for path in files if path.suffix == ".db"]
    assert compute_logs and databases
    # The search would find what is there: the run's topic is stored, in the event log and the run config.
    assert any(secured_topic.encode() in path.read_bytes() for path in databases)
    assert [str(path) for path in files if password.encode() in path.read_bytes()] == []
