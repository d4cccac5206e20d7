"""Topic name rules as Kafka applies them, and the settings that keep original timestamps."""

import pytest

from clickstream_dagster.topics import original_time_problems, topic_name_problem, topic_name_warning

WEEK_MS = 604_800_000
OLDEST_MS = 1_330_560_000_000  # 2012-03-01
NOW_MS = 1_764_374_400_000  # 2025-11-29
DEFAULTS = {  # a Kafka 4 topic created with the broker's defaults
    "retention.ms": str(WEEK_MS),
    "cleanup.policy": "delete",
    "message.timestamp.type": "CreateTime",
    "message.timestamp.before.max.ms": "9223372036854775807",
}


@pytest.mark.parametrize("name", ["click-data", "a", "A.b-C_9", "x" * 249, "..."])
def test_names_kafka_accepts(name):
    assert topic_name_problem(name) is None


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("", "cannot be empty"),
        (".", "'.' or '..'"),
        ("..", "'.' or '..'"),
        ("x" * 250, "250 characters, Kafka allows at most 249"),
        ("bad topic", "topic='bad topic'"),
        ("clické", "only ASCII letters"),
        ("a/b", "only ASCII letters"),
    ],
)
def test_names_kafka_refuses(name, says):
    assert says in topic_name_problem(name)


def test_mixing_dot_and_underscore_is_warned_about():
    assert "mixes '.' and '_'" in topic_name_warning("click.data_v2")
    assert topic_name_warning("click_data") is None and topic_name_warning("click.data") is None


def problems(settings, allow=False):
    return original_time_problems(
        "click-data", settings, OLDEST_MS, NOW_MS, allow_retention_deletes=allow, bootstrap_servers="k:9092"
    )


def test_default_retention_would_delete_2012_records_and_the_fix_is_named():
    [problem] = problems(DEFAULTS)
    assert "retention.ms=604800000 (7 days)" in problem
    assert "13.7 years ago" in problem
    assert (
        "kafka-configs.sh --bootstrap-server k:9092 --alter --entity-type topics --entity-name click-data "
        "--add-config retention.ms=-1" in problem
    )
    assert "allow_retention_deletes: true" in problem


def test_accepted_deletes_unlimited_or_long_retention_and_compaction_only_pass():
    assert problems(DEFAULTS, allow=True) == []
    assert problems(DEFAULTS | {"retention.ms": "-1"}) == []
    assert problems(DEFAULTS | {"retention.ms": str(NOW_MS - OLDEST_MS + 1)}) == []
    assert problems(DEFAULTS | {"cleanup.policy": "compact"}) == []
    assert problems(DEFAULTS | {"cleanup.policy": "compact,delete"}) != []


def test_a_broker_that_restamps_or_refuses_old_records_fails_even_when_deletes_are_accepted():
    restamps = DEFAULTS | {"retention.ms": "-1", "message.timestamp.type": "LogAppendTime"}
    [problem] = problems(restamps, allow=True)
    assert "message.timestamp.type=LogAppendTime" in problem and "--add-config message.timestamp.type=CreateTime" in problem
    refuses = DEFAULTS | {"retention.ms": "-1", "message.timestamp.before.max.ms": str(WEEK_MS)}
    [problem] = problems(refuses, allow=True)
    assert "message.timestamp.before.max.ms=604800000" in problem and "refuses records 13.7 years old" in problem


def test_settings_a_broker_does_not_report_are_not_held_against_it():
    # e.g. message.timestamp.before.max.ms exists only from Kafka 3.6 on
    assert problems({"retention.ms": "-1"}) == []
