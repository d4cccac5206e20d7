"""What a topic must be for a replay: Kafka's name rules, and the settings that keep
records stamped with their original (2012) time. Pure; no Kafka client, no Dagster.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# Kafka's own rules (org.apache.kafka.common.internals.Topic): 1-249 of these characters,
# and neither "." nor "..".
MAX_TOPIC_NAME_LENGTH = 249
_LEGAL_TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]+")

# What a topic created for record_timestamp=original is given: no time-based deletion.
ORIGINAL_TIME_TOPIC_CONFIGS = {"retention.ms": "-1"}
# The topic settings that decide whether original timestamps are kept, read before sending.
ORIGINAL_TIME_SETTINGS = (
    "retention.ms",
    "cleanup.policy",
    "message.timestamp.type",
    "message.timestamp.before.max.ms",
)
_DAY_MS = 86_400_000


def topic_name_problem(name: str) -> str | None:
    """Why Kafka would refuse ``name`` as a topic name, or None if it is legal."""
    if not name:
        return "a topic name cannot be empty"
    if name in (".", ".."):
        return f"topic={name!r}: Kafka does not allow '.' or '..' as a topic name"
    if len(name) > MAX_TOPIC_NAME_LENGTH:
        return f"topic={name[:40]!r}...: {len(name)} characters, Kafka allows at most {MAX_TOPIC_NAME_LENGTH}"
    if not _LEGAL_TOPIC_NAME.fullmatch(name):
        return f"topic={name!r}: Kafka allows only ASCII letters, digits, '.', '_' and '-'"
    return None


def topic_name_warning(name: str) -> str | None:
    """Kafka's own warning for names with both '.' and '_' (they collide in metric names)."""
    if "." in name and "_" in name:
        return (
            f"topic={name!r} mixes '.' and '_': Kafka's metric names cannot tell them apart, so it "
            "refuses to create a topic whose name differs from an existing one only there"
        )
    return None


def original_time_problems(
    topic: str,
    settings: Mapping[str, str | None],
    oldest_record_ms: int,
    now_ms: int,
    *,
    allow_retention_deletes: bool,
    bootstrap_servers: str,
) -> list[str]:
    """Why ``topic`` (with these effective ``settings``) would not keep records stamped from
    ``oldest_record_ms`` on: each reason names the setting and the command that fixes it.
    """
    problems = []
    age_ms = now_ms - oldest_record_ms
    years = age_ms / (365.25 * _DAY_MS)

    def fix(setting: str) -> str:
        return (
            f"kafka-configs.sh --bootstrap-server {bootstrap_servers} --alter --entity-type topics "
            f"--entity-name {topic} --add-config {setting}"
        )

    if settings.get("message.timestamp.type") == "LogAppendTime":
        problems.append(
            f"topic {topic!r} has message.timestamp.type=LogAppendTime: the broker replaces every "
            f"record's timestamp with the time it was written. Fix: {fix('message.timestamp.type=CreateTime')}"
        )
    before_max = _as_int(settings.get("message.timestamp.before.max.ms"))
    if before_max is not None and age_ms > before_max:
        problems.append(
            f"topic {topic!r} has message.timestamp.before.max.ms={before_max}: the broker refuses "
            f"records {years:.1f} years old. Fix: {fix('message.timestamp.before.max.ms=9223372036854775807')}"
        )
    retention = _as_int(settings.get("retention.ms"))
    deletes = "delete" in (settings.get("cleanup.policy") or "delete")
    if deletes and retention is not None and retention >= 0 and age_ms > retention and not allow_retention_deletes:
        problems.append(
            f"topic {topic!r} has retention.ms={retention} ({retention / _DAY_MS:g} days): the broker "
            f"would delete records stamped {years:.1f} years ago within minutes of the replay. "
            f"Fix: {fix('retention.ms=-1')}, or set allow_retention_deletes: true in the run config "
            "to send them anyway"
        )
    return problems


def _as_int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
