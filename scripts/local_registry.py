#!/usr/bin/env python3
"""A local schema registry for development and tests: Apicurio Registry, like the local broker.

    python3 scripts/local_registry.py up [--port 8081] [--state-dir .registry] [--tls]
    python3 scripts/local_registry.py status|down|logs [--state-dir .registry]

``up`` resolves the Apicurio Registry distribution with Maven (once: it stays in ``~/.m2``,
unpacked beside it), starts it on 127.0.0.1 (Java 17, in-memory storage: every start is an
empty registry), waits until its Confluent-compatible API answers and prints
``export SCHEMA_REGISTRY_URL=http://127.0.0.1:P/apis/ccompat/v7``. It is a no-op when the
registry of that state dir is already up. ``down`` stops it, ``status`` exits 0 if it runs,
``logs`` prints the end of its log.
With ``--tls`` it serves https only, with a certificate for 127.0.0.1 signed by a CA made
with ``openssl`` in ``<state>/tls``, and also prints ``export SCHEMA_REGISTRY_CA_FILE=...``.

Resolving, starting, waiting and stopping are the launcher layer's (local_services.py, shared
with local_kafka.py and the tests' PostgreSQL and s3proxy). Standard library only (it runs before
the virtualenv exists, like local_kafka.py).
"""

from __future__ import annotations

import argparse
import json
import shutil
import ssl
import subprocess
import sys
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

# The launcher layer beside this file, also when a test or benchmark loads this one by path.
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.append(str(Path(__file__).resolve().parent))
import local_services  # noqa: E402
from local_services import HOST, free_port  # noqa: E402,F401  (this module's API)

DEFAULT_PORT = 8081
# 3.x needs Java 21 and misses jars on Maven Central; 2.6.13.Final runs on Java 17.
VERSION = "2.6.13.Final"
ARTIFACT = f"io.apicurio:apicurio-registry-app:{VERSION}:zip:all"
API_PATH = "/apis/ccompat/v7"
DEFAULT_STATE_DIR = Path(__file__).resolve().parent.parent / ".registry"
DEFAULT_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 15.0
LOG_FILE = "registry.log"
STATE_FILE = "registry.json"  # pid, port, tls


LocalRegistryError = local_services.ServiceError


def resolve_distribution() -> Path:
    """The unpacked distribution's runner jar, fetched with Maven the first time only."""
    folder = local_services.artifact_path(ARTIFACT).parent
    runner = folder / "unpacked" / f"apicurio-registry-app-{VERSION}-runner.jar"
    if runner.is_file():
        return runner
    archive = local_services.resolve_artifact(ARTIFACT)
    partial = folder / "unpacked.partial"
    shutil.rmtree(partial, ignore_errors=True)
    with zipfile.ZipFile(archive) as zipped:
        zipped.extractall(partial)
    partial.rename(folder / "unpacked")  # atomic: a half-unpacked copy is never used
    return runner


def api_url(port: int, tls: bool = False) -> str:
    return f"{'https' if tls else 'http'}://{HOST}:{port}{API_PATH}"


def answers(url: str, timeout_s: float = 2.0, ca_file: Optional[Path] = None) -> bool:
    """True once the registry lists its subjects (its storage is ready, not just its port)."""
    context = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
    try:
        with urllib.request.urlopen(f"{url}/subjects", timeout=timeout_s, context=context) as response:
            return response.status == 200 and isinstance(json.loads(response.read()), list)
    except (OSError, ValueError):
        return False


def _make_tls(tls: Path) -> None:
    """A CA and a certificate for 127.0.0.1 signed by it, PEM, in ``tls`` (made once)."""
    if (tls / "registry.pem").is_file():
        return
    openssl = shutil.which("openssl")
    if not openssl:
        raise LocalRegistryError("openssl not found on PATH; --tls needs it to make the certificates")
    tls.mkdir(parents=True, exist_ok=True)
    (tls / "leaf.ext").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
    )
    for args in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650", "-keyout", "ca.key", "-out", "ca.pem",
         "-subj", "/CN=clickstream local registry CA", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "registry.key", "-out", "registry.csr", "-subj", f"/CN={HOST}"],
        ["x509", "-req", "-in", "registry.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "3650",
         "-extfile", "leaf.ext", "-out", "registry.pem"],
    ):
        done = subprocess.run([openssl, *args], cwd=tls, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise LocalRegistryError(f"openssl {args[0]} failed: {done.stderr.strip()}")


@dataclass
class Registry:
    state_dir: Path
    pid: int
    port: int
    tls: bool = False

    @property
    def url(self) -> str:
        return api_url(self.port, self.tls)

    @property
    def ca_file(self) -> Optional[Path]:
        """The CA to verify a --tls registry with (SCHEMA_REGISTRY_CA_FILE)."""
        return self.state_dir / "tls" / "ca.pem" if self.tls else None

    @property
    def log_path(self) -> Path:
        return self.state_dir / LOG_FILE

    def running(self) -> bool:
        return local_services.pid_alive(self.pid)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> bool:
        """Stop the registry's session; True if it was running."""
        was_running = local_services.stop(self.pid, timeout_s, what="Apicurio Registry")
        (self.state_dir / STATE_FILE).unlink(missing_ok=True)
        return was_running


def running_registry(state_dir: Path | str = DEFAULT_STATE_DIR) -> Optional[Registry]:
    state_dir = Path(state_dir)
    try:
        saved = json.loads((state_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    registry = Registry(state_dir, int(saved["pid"]), int(saved["port"]), bool(saved.get("tls")))
    return registry if registry.running() else None


def start_registry(
    state_dir: Path | str = DEFAULT_STATE_DIR,
    port: Optional[int] = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    tls: bool = False,
) -> Registry:
    """Start (or find running) the registry of ``state_dir``; returns once it answers.
    ``tls``: https only, its CA in ``<state_dir>/tls/ca.pem``."""
    state_dir = Path(state_dir)
    if (found := running_registry(state_dir)) is not None:
        return found
    runner = resolve_distribution()
    java = local_services.find_java("Apicurio Registry 2.6 needs a Java 17 runtime")
    port = port or free_port()
    state_dir.mkdir(parents=True, exist_ok=True)
    listen = [f"-Dquarkus.http.port={port}"]
    if tls:
        _make_tls(state_dir / "tls")
        listen = [
            f"-Dquarkus.http.ssl-port={port}",
            "-Dquarkus.http.port=0",  # the plain listener on any port, refusing every request
            "-Dquarkus.http.insecure-requests=disabled",
            f"-Dquarkus.http.ssl.certificate.files={state_dir / 'tls' / 'registry.pem'}",
            f"-Dquarkus.http.ssl.certificate.key-files={state_dir / 'tls' / 'registry.key'}",
        ]
    process = local_services.start(
        [java, "-Xmx384m", f"-Dquarkus.http.host={HOST}", *listen, "-jar", str(runner)],
        state_dir, log_file=LOG_FILE,
    )
    registry = Registry(state_dir, process.pid, port, tls)
    (state_dir / STATE_FILE).write_text(json.dumps({"pid": process.pid, "port": port, "tls": tls}))
    try:
        local_services.wait_until_answers(
            lambda: None if answers(registry.url, ca_file=registry.ca_file) else "no answer",
            timeout_s, what="Apicurio Registry", where=registry.url, proc=process, interval_s=0.3,
        )
    except local_services.NotAnswering as error:
        registry.stop()
        exited = error.exit_code is not None
        why = f"exited with {error.exit_code}" if exited else f"no answer in {timeout_s:g} s"
        tail = local_services.tail(registry.log_path, 20)
        raise LocalRegistryError(f"Apicurio Registry on port {port} {why}; log {registry.log_path}:\n{tail}") from None
    return registry


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="A local Apicurio schema registry (Confluent-compatible API).")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("up", "start it (no-op if up)"), ("down", "stop it"), ("status", "exit 0 if it runs"),
                       ("logs", "print the end of its log")):
        command = sub.add_parser(name, help=text)
        command.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, help="pid, port and log")
        if name == "up":
            command.add_argument("--port", type=int, default=DEFAULT_PORT)
            command.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds to wait for it")
            command.add_argument("--tls", action="store_true", help="https only, with a CA of its own")
        if name == "logs":
            command.add_argument("--lines", type=int, default=60, help="how many (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.command == "up":
        try:
            registry = start_registry(args.state_dir, args.port, args.timeout, args.tls)
        except LocalRegistryError as error:
            print(f"local_registry: {error}", file=sys.stderr)
            return 1
        print(f"Apicurio Registry {VERSION} up (pid {registry.pid}, log {registry.log_path})",
              file=sys.stderr)
        print(f"export SCHEMA_REGISTRY_URL={registry.url}")
        if registry.ca_file:
            print(f"export SCHEMA_REGISTRY_CA_FILE={registry.ca_file}")
        return 0
    if args.command == "logs":
        print(local_services.tail(args.state_dir / LOG_FILE, args.lines))
        return 0
    registry = running_registry(args.state_dir)
    if args.command == "status":
        print(f"running: {registry.url} (pid {registry.pid})" if registry else "not running")
        return 0 if registry else 1
    print("stopped" if registry and registry.stop() else "not running")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
