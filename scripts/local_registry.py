#!/usr/bin/env python3
"""A local schema registry for development and tests: Apicurio Registry, like the local broker.

    python3 scripts/local_registry.py up [--port 8081] [--state-dir .registry] [--tls]
    python3 scripts/local_registry.py status|down [--state-dir .registry]

``up`` resolves the Apicurio Registry distribution with Maven (once: it stays in ``~/.m2``,
unpacked beside it), starts it on 127.0.0.1 (Java 17, in-memory storage: every start is an
empty registry), waits until its Confluent-compatible API answers and prints
``export SCHEMA_REGISTRY_URL=http://127.0.0.1:P/apis/ccompat/v7``. It is a no-op when the
registry of that state dir is already up. ``down`` stops it, ``status`` exits 0 if it runs.
With ``--tls`` it serves https only, with a certificate for 127.0.0.1 signed by a CA made
with ``openssl`` in ``<state>/tls``, and also prints ``export SCHEMA_REGISTRY_CA_FILE=...``.

Standard library only (it runs before the virtualenv exists, like local_kafka.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

HOST = "127.0.0.1"
DEFAULT_PORT = 8081
# 3.x needs Java 21 and misses jars on Maven Central; 2.6.13.Final runs on Java 17.
VERSION = "2.6.13.Final"
ARTIFACT = f"io.apicurio:apicurio-registry-app:{VERSION}:zip:all"
API_PATH = "/apis/ccompat/v7"
DEFAULT_STATE_DIR = Path(__file__).resolve().parent.parent / ".registry"
DEFAULT_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 15.0


class LocalRegistryError(RuntimeError):
    pass


def free_port(host: str = HOST) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _m2() -> Path:
    return Path(os.environ.get("MAVEN_REPO_LOCAL") or Path.home() / ".m2" / "repository")


def resolve_distribution() -> Path:
    """The unpacked distribution's runner jar, fetched with Maven the first time only."""
    folder = _m2() / "io" / "apicurio" / "apicurio-registry-app" / VERSION
    runner = folder / "unpacked" / f"apicurio-registry-app-{VERSION}-runner.jar"
    if runner.is_file():
        return runner
    archive = folder / f"apicurio-registry-app-{VERSION}-all.zip"
    if not archive.is_file():
        mvn = shutil.which("mvn")
        if not mvn:
            raise LocalRegistryError("mvn (Apache Maven) not found on PATH; it is needed once to fetch " + ARTIFACT)
        cmd = [mvn, "-B", "-q", "dependency:get", f"-Dartifact={ARTIFACT}", "-Dtransitive=false"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not archive.is_file():
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
            raise LocalRegistryError(f"could not fetch {ARTIFACT} with Maven:\n{tail}")
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

    def running(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        # A zombie child of this process counts as gone.
        try:
            return os.waitpid(self.pid, os.WNOHANG) == (0, 0)
        except ChildProcessError:
            return True

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> bool:
        """Stop the registry's process group; True if it was running."""
        was_running = self.running()
        for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
            if not self.running():
                break
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait_s
            while self.running() and time.monotonic() < deadline:
                time.sleep(0.1)
        (self.state_dir / "registry.json").unlink(missing_ok=True)
        return was_running


def running_registry(state_dir: Path | str = DEFAULT_STATE_DIR) -> Optional[Registry]:
    state_dir = Path(state_dir)
    try:
        saved = json.loads((state_dir / "registry.json").read_text())
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
    java = shutil.which("java")
    if not java:
        raise LocalRegistryError("java not found on PATH (Apicurio Registry 2.6 needs Java 17)")
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
    log_path = state_dir / "registry.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [java, "-Xmx384m", f"-Dquarkus.http.host={HOST}", *listen, "-jar", str(runner)],
            cwd=state_dir,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: `down` stops exactly it
        )
    registry = Registry(state_dir, process.pid, port, tls)
    (state_dir / "registry.json").write_text(json.dumps({"pid": process.pid, "port": port, "tls": tls}))
    deadline = time.monotonic() + timeout_s
    while not answers(registry.url, ca_file=registry.ca_file):
        if process.poll() is not None or time.monotonic() > deadline:
            registry.stop()
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
            why = f"exited with {process.returncode}" if process.returncode is not None else f"no answer in {timeout_s:g} s"
            raise LocalRegistryError(f"Apicurio Registry on port {port} {why}; log {log_path}:\n{tail}")
        time.sleep(0.3)
    return registry


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="A local Apicurio schema registry (Confluent-compatible API).")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("up", "start it (no-op if up)"), ("down", "stop it"), ("status", "exit 0 if it runs")):
        command = sub.add_parser(name, help=text)
        command.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, help="pid, port and log")
        if name == "up":
            command.add_argument("--port", type=int, default=DEFAULT_PORT)
            command.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds to wait for it")
            command.add_argument("--tls", action="store_true", help="https only, with a CA of its own")
    args = parser.parse_args(argv)
    if args.command == "up":
        try:
            registry = start_registry(args.state_dir, args.port, args.timeout, args.tls)
        except LocalRegistryError as error:
            print(f"local_registry: {error}", file=sys.stderr)
            return 1
        print(f"Apicurio Registry {VERSION} up (pid {registry.pid}, log {registry.state_dir / 'registry.log'})", file=sys.stderr)
        print(f"export SCHEMA_REGISTRY_URL={registry.url}")
        if registry.ca_file:
            print(f"export SCHEMA_REGISTRY_CA_FILE={registry.ca_file}")
        return 0
    registry = running_registry(args.state_dir)
    if args.command == "status":
        print(f"running: {registry.url} (pid {registry.pid})" if registry else "not running")
        return 0 if registry else 1
    print("stopped" if registry and registry.stop() else "not running")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
