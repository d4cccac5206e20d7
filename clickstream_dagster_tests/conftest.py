"""Shared fixtures. The real servers live in their own plugins: Kafka (kafka_fixtures.py), the
secured broker (secured_kafka_fixtures.py), PostgreSQL (postgres_fixtures.py), S3 (s3_fixtures.py), the schema registry (registry_fixtures.py)."""

import pytest
from dagster import instance_for_test

pytest_plugins = [
    "clickstream_dagster_tests.kafka_fixtures",
    "clickstream_dagster_tests.secured_kafka_fixtures",
    "clickstream_dagster_tests.postgres_fixtures",
    "clickstream_dagster_tests.s3_fixtures",
    "clickstream_dagster_tests.registry_fixtures",
]


@pytest.fixture
def dagster_instance():
    """A real, temporary Dagster instance (its own DAGSTER_HOME, SQLite storage)."""
    with instance_for_test() as instance:
        yield instance
