"""pytest plugin: a real schema registry (Apicurio Registry) for the typed-format tests.

* ``schema_registry_url`` (session, lazy: started only when a test asks for it):
  ``$SCHEMA_REGISTRY_URL`` if set, else Apicurio Registry started by
  ``scripts/local_registry.py`` on a free port (in-memory storage), stopped at the end of the
  session. Tests use subjects of their own (unique topic names), so a shared registry works.

``REGISTRY_START_TIMEOUT_S`` (default 90) bounds the start.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Iterator

import pytest

LOCAL_REGISTRY_PATH = Path(__file__).resolve().parent.parent / "scripts" / "local_registry.py"
_MODULE_NAME = "clickstream_local_registry"


def load_local_registry() -> ModuleType:
    """Import scripts/local_registry.py by path (a script, not a package module)."""
    module = sys.modules.get(_MODULE_NAME)
    if module is None:
        spec = importlib.util.spec_from_file_location(_MODULE_NAME, LOCAL_REGISTRY_PATH)
        module = importlib.util.module_from_spec(spec)
        sys.modules[_MODULE_NAME] = module  # dataclasses need the module registered
        spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def schema_registry_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("SCHEMA_REGISTRY_URL", "").strip()
    if external:
        yield external
        return
    local = load_local_registry()
    timeout_s = float(os.environ.get("REGISTRY_START_TIMEOUT_S") or local.DEFAULT_TIMEOUT_S)
    try:
        registry = local.start_registry(tmp_path_factory.mktemp("schema-registry"), timeout_s=timeout_s)
    except local.LocalRegistryError as error:
        pytest.fail(f"could not start a local schema registry: {error}", pytrace=False)
    try:
        yield registry.url
    finally:
        registry.stop()
