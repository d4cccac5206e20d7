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


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (`make test`), each worker starts its own servers, but they all share
    the jars in ~/.m2 and the classpath caches: the controller resolves them once, before any
    worker starts, so no two Maven processes ever write the same local repository."""
    is_worker = hasattr(config, "workerinput")
    unit_only = "not integration" in (config.option.markexpr or "")
    if is_worker or unit_only or not getattr(config.option, "numprocesses", None) or config.option.collectonly:
        return
    # imported here: importing the plugins before pytest registers them would skip their
    # assertion rewriting
    from clickstream_dagster_tests import kafka_fixtures, registry_fixtures, s3_fixtures

    cache_dir = kafka_fixtures._classpath_cache_dir()
    kafka_fixtures.load_local_kafka().resolve_classpath(cache_dir, cache_dir)
    registry_fixtures.load_local_registry().resolve_distribution()
    s3_fixtures.resolve_classpath(cache_dir)


# Modules whose tests may run on different workers: they share no server of their own, and
# their faults take long enough that spreading them is what shortens the suite. Every other
# module runs on one worker, so a module-scoped server (a webserver, a secured broker, a cluster)
# is started once, as in a serial run.
SPREAD_MODULES = {"clickstream_dagster_tests/integration/test_crash_safety.py"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        if module not in SPREAD_MODULES:
            item.add_marker(pytest.mark.xdist_group(module))
