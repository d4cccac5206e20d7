"""deploy/dagster.yaml: the deployment's instance keeps the project instance's rules.

The project instance (.dagster_home/dagster.yaml, `make dev`) and a deployment's
(deploy/dagster.yaml, Postgres) must queue replays and watch run workers the same way; a
change to one that forgets the other fails here. That deploy/dagster.yaml actually runs on
Postgres is tested in integration/test_deploy_storage.py and by the e2e tests.
"""

from pathlib import Path

import pytest
import yaml
from dagster._core.instance.config import dagster_instance_config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY_YAML = ROOT / "deploy" / "dagster.yaml"
PROJECT_YAML = ROOT / ".dagster_home" / "dagster.yaml"
# The sections that carry the project's concurrency and crash-recovery rules.
SHARED_SECTIONS = ("concurrency", "run_monitoring", "run_retries")
DAGSTER_PG_VARIABLES = {"DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USERNAME", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB"}


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("section", SHARED_SECTIONS)
def test_deployment_keeps_the_project_instance_rules(section):
    deploy, project = _load(DEPLOY_YAML), _load(PROJECT_YAML)
    if section not in project:
        pytest.skip(f"{PROJECT_YAML.name} has no {section} section")
    assert deploy.get(section) == project[section], f"{section} differs between {DEPLOY_YAML} and {PROJECT_YAML}"


def test_deployment_keeps_one_replay_per_topic_and_no_pool():
    limits = _load(DEPLOY_YAML)["concurrency"]["runs"]["tag_concurrency_limits"]
    assert {"key": "clickstream/topic", "value": {"applyLimitPerUniqueValue": True}, "limit": 1} in limits
    assert "pools" not in _load(DEPLOY_YAML)["concurrency"]


def test_deployment_storage_is_postgres_from_the_documented_variables():
    db = _load(DEPLOY_YAML)["storage"]["postgres"]["postgres_db"]
    assert {value["env"] for value in db.values() if isinstance(value, dict)} == DAGSTER_PG_VARIABLES


def test_deployment_config_is_a_valid_instance_config(tmp_path, monkeypatch):
    (tmp_path / "dagster.yaml").write_text(DEPLOY_YAML.read_text())
    for name in DAGSTER_PG_VARIABLES:
        monkeypatch.setenv(name, "5432" if name.endswith("PORT") else "x")
    config, _ = dagster_instance_config(str(tmp_path))
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
