"""The whole project at a glance: what is computed, from what, with what, and when.

    clickstream_csv      the log file (CLICKSTREAM_CSV), watched by sensor clickstream_log_changed
        │  assets/prepare.py      pure logic: cleaning.py
        ▼
    clickstream_events   daily Parquet partitions, the days of CLICKSTREAM_DAYS, per-day checks
    clickstream_rejects  every line not kept, with its reason; check: every line accounted for
        │  assets/replay.py       pure logic: pacing.py, encoding.py (typed_encoding.py), event_time.py,
        │                         injection.py, replay.py, checkpoints.py; kafka_client.py, schema_registry.py
        ▼
    click_data           one day replayed into the Kafka topic `click-data`

Jobs (jobs.py): prepare_clickstream (a range of days in one run), replay_clickstream (a day).
Live feed (sensors.py, feed.py): replay_feed, the days one after the other without a gap
(stopped until switched on). Watchdog (sensors.py, checkpoints.py): replay_watchdog fails the
replay runs whose process is gone, judged by their checkpoints in Kafka. Schedule (schedules.py): replay_cycle, a day at fixed times.
Days (partitions.py): CLICKSTREAM_DAYS=FIRST..LAST, default the sample's 2012-03-01..2012-03-15.
Resources: the log file, the Parquet IO manager (CLICKSTREAM_STORAGE_DIR) and the Kafka
cluster (KAFKA_*), the schema registry of the typed formats (SCHEMA_REGISTRY_*). Everything that differs per deployment is an environment variable.
"""

import os

from dagster import Definitions, EnvVar

from clickstream_dagster.assets import prepare, replay
from clickstream_dagster.jobs import prepare_clickstream, replay_clickstream
from clickstream_dagster.kafka_client import CLIENT_VARIABLE, CREDENTIAL_FIELDS, ENVIRONMENT_VARIABLES
from clickstream_dagster.resources.kafka import KafkaResource
from clickstream_dagster.resources.log_file import DEFAULT_LOG_PATH, ClickstreamLogFile
from clickstream_dagster.resources.parquet import DailyParquetIOManager
from clickstream_dagster.resources.schema_registry import SchemaRegistryResource
from clickstream_dagster.schedules import replay_cycle
from clickstream_dagster.schema_registry import CA_FILE_VARIABLE, URL_VARIABLE, USER_INFO_VARIABLE
from clickstream_dagster.sensors import clickstream_log_changed, replay_feed, replay_watchdog


def schema_registry_from_environment() -> SchemaRegistryResource:
    """The registry named by SCHEMA_REGISTRY_URL (none when unset: json and quix need none)."""
    config = {}
    if os.environ.get(URL_VARIABLE):
        config["url"] = os.environ[URL_VARIABLE]
    if os.environ.get(USER_INFO_VARIABLE):
        # Read at run time and never shown.
        config["user_info"] = EnvVar(USER_INFO_VARIABLE)
    if os.environ.get(CA_FILE_VARIABLE):
        config["ca_file"] = os.environ[CA_FILE_VARIABLE]
    return SchemaRegistryResource(**config)


def kafka_from_environment() -> KafkaResource:
    """The cluster named by the KAFKA_* variables; a local broker on 9092 when none are set."""
    config = {
        field: os.environ[variable]
        for field, variable in ENVIRONMENT_VARIABLES.items()
        if os.environ.get(variable) and field not in CREDENTIAL_FIELDS
    }
    if config.get("security_protocol", "PLAINTEXT").startswith("SASL"):
        # Read at run time and never shown: an unset variable fails the launch by name.
        config |= {field: EnvVar(ENVIRONMENT_VARIABLES[field]) for field in CREDENTIAL_FIELDS}
    if os.environ.get(CLIENT_VARIABLE):
        config["client"] = os.environ[CLIENT_VARIABLE]
    return KafkaResource(**config)


def resources_from_environment() -> dict:
    """The resources as this deployment's environment sets them. The values they are built with
    are the defaults of their config fields (``BuiltValuesAreDefaults``): a run that sets some
    fields keeps the others, and the launchpad shows them (an ``EnvVar`` by its name)."""
    return {
        "clickstream_log": ClickstreamLogFile(path=os.environ.get("CLICKSTREAM_CSV", str(DEFAULT_LOG_PATH))),
        # Unset: the Dagster instance's storage directory; or a local path / s3:// URL.
        "parquet_io_manager": DailyParquetIOManager(base_dir=os.environ.get("CLICKSTREAM_STORAGE_DIR")),
        "kafka": kafka_from_environment(),
        # SCHEMA_REGISTRY_*: the typed message formats (avro, protobuf, json_schema).
        "schema_registry": schema_registry_from_environment(),
    }


defs = Definitions(
    assets=[prepare.clickstream_csv, prepare.clickstream_events, prepare.clickstream_rejects, replay.click_data],
    asset_checks=[prepare.every_line_accounted_for, *prepare.EVENTS_CHECKS, replay.delivered_exactly_once],
    jobs=[prepare_clickstream, replay_clickstream],
    schedules=[replay_cycle],
    sensors=[clickstream_log_changed, replay_feed, replay_watchdog],
    resources=resources_from_environment(),
)
