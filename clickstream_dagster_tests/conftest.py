"""Shared fixtures. The real Kafka broker fixtures live in kafka_fixtures.py, the secured
broker's in secured_kafka_fixtures.py."""

import pytest
from dagster import instance_for_test

pytest_plugins = ["clickstream_dagster_tests.kafka_fixtures", "clickstream_dagster_tests.secured_kafka_fixtures"]


@pytest.fixture
def dagster_instance():
    """A real, temporary Dagster instance (its own DAGSTER_HOME, SQLite storage)."""
    with instance_for_test() as instance:
        yield instance
