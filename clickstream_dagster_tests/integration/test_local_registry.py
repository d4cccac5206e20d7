"""scripts/local_registry.py as a person runs it: up prints the URL to export, status and down."""

import subprocess
import sys

import pytest

from clickstream_dagster_tests.registry_fixtures import LOCAL_REGISTRY_PATH, load_local_registry

pytestmark = pytest.mark.integration


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(LOCAL_REGISTRY_PATH), *args], capture_output=True, text=True, timeout=180)


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_up_status_down(tmp_path, tls):
    local = load_local_registry()
    state = str(tmp_path / "registry")
    port = local.free_port()
    up = run("up", "--port", str(port), "--state-dir", state, *(["--tls"] if tls else []))
    try:
        assert up.returncode == 0, up.stderr
        url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/apis/ccompat/v7"
        ca_file = tmp_path / "registry" / "tls" / "ca.pem" if tls else None
        exports = [f"export SCHEMA_REGISTRY_URL={url}"] + ([f"export SCHEMA_REGISTRY_CA_FILE={ca_file}"] if tls else [])
        assert up.stdout.splitlines() == exports  # stdout is only what to eval
        assert local.answers(url, ca_file=ca_file)
        again = run("up", "--port", str(port), "--state-dir", state)  # already up: the same one
        assert again.returncode == 0 and again.stdout == up.stdout
        assert run("status", "--state-dir", state).returncode == 0
    finally:
        down = run("down", "--state-dir", state)
    assert down.returncode == 0 and down.stdout.strip() == "stopped"
    assert run("status", "--state-dir", state).returncode == 1
    assert not local.answers(url, ca_file=ca_file)
