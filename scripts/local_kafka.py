#!/usr/bin/env python3
"""Start and stop a real Apache Kafka broker, or a cluster of them (KRaft, no Docker).

The broker jars come from Maven Central through ``scripts/kafka/pom.xml`` (resolved
once into ~/.m2; the resulting classpath is cached in the state dir keyed by the Kafka
version, so later starts never call Maven). The broker runs as
``java -cp <classpath> kafka.Kafka <state>/server.properties`` in its own session,
combined broker+controller, listening on 127.0.0.1 only.

Resolving the jars, starting a node in its own session, waiting until it answers, stopping
it and its logs are the launcher layer's (``scripts/local_services.py``, shared with
local_registry.py and the tests' PostgreSQL and s3proxy); what is Kafka's stays here.

Standard library only: this runs before the project's venv exists.

CLI::

    python3 scripts/local_kafka.py up     [--port 9092] [--state-dir .kafka] [--timeout 90]
    python3 scripts/local_kafka.py status [--state-dir .kafka]
    python3 scripts/local_kafka.py down   [--state-dir .kafka]
    python3 scripts/local_kafka.py logs   [--state-dir .kafka] [--lines 60]

    # A secured broker (default port 9093, state dir .kafka-<security>); stdout is only
    # `export KAFKA_...` lines for the replay user, so a shell can eval it:
    eval "$(python3 scripts/local_kafka.py up --security sasl_ssl|ssl|sasl_plaintext)"
    python3 scripts/local_kafka.py env  --security sasl_ssl [--user admin]   # print them again
    python3 scripts/local_kafka.py down --security sasl_ssl

    # A cluster of 3 (ports 9092-9094 or --port P.., state dir .kafka-cluster), plaintext:
    python3 scripts/local_kafka.py up|status|down --brokers 3 [--port P]

API (used by the pytest fixture)::

    broker = start_broker(state_dir, port, timeout_s=90)
    broker.bootstrap_servers, broker.pid, broker.log_path
    broker.stop()            # or stop_broker(state_dir)

    # one broker, one listener per security mode, extra users (credentials + certificates):
    broker = start_broker(state_dir, port, security=("sasl_ssl", "ssl"), users=("reader",))
    broker.client_environment("ssl", "reader")     # the KAFKA_* variables of that user
    broker.grant("reader", replay_acls("at_least_once", topic))

    # a cluster: nodes 1..N, each a Broker with its own state dir <state>/node-<id>
    cluster = start_cluster(state_dir, brokers=3, port=0)      # 0: any free ports
    cluster.bootstrap_servers, cluster.node(2).pid, cluster.node(2).port
    cluster.start_node(2)    # after a kill: back on the same port and data dir
    cluster.stop()           # or stop_broker(state_dir)

A cluster's nodes are all broker+controller (the quorum voters), formatted with one cluster
id; its topics and Kafka's internal ones get replication 3 and min.insync.replicas 2; each
node's heap is ``CLUSTER_HEAP_OPTS`` unless KAFKA_HEAP_OPTS is set.

Security (``--security``): a CA, a broker certificate and one client certificate per user are
made with ``openssl`` into ``<state>/tls`` (PEM; Kafka reads PEM key stores); passwords are
random, kept in ``<state>/credentials.json`` (mode 0600). SASL listeners take PLAIN (users in
the listener's JAAS config) and SCRAM-SHA-256/512 (users added when the storage is formatted);
the ``ssl`` listener requires a client certificate whose CN is the user. Kafka's
StandardAuthorizer checks every request: ``broker`` and ``admin`` are super users, ``replayer``
gets the ACLs a replay needs (``replay_acls``), created through the admin user after start.
The controller listener stays PLAINTEXT on loopback.

Environment: ``KAFKA_PORT`` (default port), ``KAFKA_HEAP_OPTS`` (default
``-Xms256m -Xmx768m``), ``KAFKA_JVM_OPTS`` (extra JVM flags), ``JAVA_HOME``,
``KAFKA_CLASSPATH_CACHE_DIR`` (where the resolved classpath is cached; defaults to the
state dir).

State dir layout::

    server.properties  log4j2.properties  broker.json (ports, cluster id)
    kafka.pid          broker.log (stdout/stderr + log4j output; previous run: broker.log.prev)
    data/              KRaft metadata + topic data (log.dirs)
    classpath-kafka-<version>-<pomhash>.txt
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import shutil
import secrets
import shlex
import signal
import socket
import ssl
import stat
import struct
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

# The launcher layer beside this file (resolve, start, wait, status, down, logs); also found
# when a test or benchmark loads this file by path. Appended: nothing installed is shadowed.
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.append(str(Path(__file__).resolve().parent))
import local_services  # noqa: E402
from local_services import HOST, free_port, pid_alive, port_is_free  # noqa: E402,F401  (this module's API)
from local_services import state_lock as _state_lock, write_atomic as _write_atomic  # noqa: E402

DEFAULT_PORT = 9092
DEFAULT_TIMEOUT_S = 90.0
DEFAULT_HEAP_OPTS = "-Xms256m -Xmx768m"
CLUSTER_HEAP_OPTS = "-Xms256m -Xmx512m"  # each node of a cluster
DEFAULT_JVM_OPTS = (
    "-XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 "
    "-XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true"
)
STOP_TIMEOUT_S = 30.0
NODE_ID = 1

SCRIPT_DIR = Path(__file__).resolve().parent
REPO_ROOT = SCRIPT_DIR.parent
POM_PATH = SCRIPT_DIR / "kafka" / "pom.xml"
DEFAULT_STATE_DIR = REPO_ROOT / ".kafka"

PID_FILE = "kafka.pid"
LOG_FILE = "broker.log"
META_FILE = "broker.json"
SERVER_PROPERTIES = "server.properties"
LOG4J_PROPERTIES = "log4j2.properties"
DATA_DIR = "data"
MAIN_CLASS = "kafka.Kafka"
STORAGE_TOOL_CLASS = "kafka.tools.StorageTool"

# Security modes: "plaintext" (the default) or one secured listener per mode.
SECURITY_MODES = ("plaintext", "sasl_ssl", "ssl", "sasl_plaintext")
SECURED_DEFAULT_PORT = 9093
TLS_DIR = "tls"
CREDENTIALS_FILE = "credentials.json"
BROKER_USER, ADMIN_USER, REPLAY_USER = "broker", "admin", "replayer"
SCRAM_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256")
# What the printed settings use per mode; every SASL listener accepts all three mechanisms.
CLIENT_MECHANISM = {"sasl_ssl": "SCRAM-SHA-512", "sasl_plaintext": "PLAIN"}
AUTHORIZER_CLASS = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
# The project's names (clickstream_dagster.checkpoints / assets.replay), repeated here
# because this script runs before the package is installed.
REPLAY_TOPIC = "click-data"
CHECKPOINT_TOPIC = "clickstream-replay-checkpoints"
TRANSACTIONAL_ID_PREFIX = "clickstream-replay-"


# A user-facing failure (its message is meant to be printed as is): the launcher layer's own.
LocalKafkaError = local_services.ServiceError
_log = local_services.log
_tail = local_services.tail


def _find_java() -> str:
    return local_services.find_java("Kafka 4 needs a Java 17+ runtime")


def kafka_version(pom_path: Path = POM_PATH) -> str:
    """The Kafka version pinned in scripts/kafka/pom.xml (``<kafka.version>``)."""
    return local_services.pom_property(pom_path, "kafka.version")


def resolve_classpath(
    state_dir: Path,
    cache_dir: Optional[Path] = None,
    pom_path: Path = POM_PATH,
) -> str:
    """Classpath of the broker: cached file if valid, else ``mvn dependency:build-classpath``."""
    version = kafka_version(pom_path)
    cache_dir = Path(
        cache_dir or os.environ.get("KAFKA_CLASSPATH_CACHE_DIR") or state_dir
    ).resolve()
    pom_hash = hashlib.sha256(pom_path.read_bytes()).hexdigest()[:10]
    cache_file = cache_dir / f"classpath-kafka-{version}-{pom_hash}.txt"
    return local_services.resolve_classpath(pom_path, cache_file, f"Kafka {version}", scope="runtime")


# --------------------------------------------------------------------------- protocol


def _kafka_request(sock: socket.socket, api_key: int, api_version: int,
                   correlation_id: int, body: bytes) -> bytes:
    """Send a request with header v1 (non-flexible) and return the response payload
    after the correlation id (response header v0)."""
    client_id = b"local_kafka"
    header = struct.pack(">hhih", api_key, api_version, correlation_id, len(client_id))
    msg = header + client_id + body
    sock.sendall(struct.pack(">i", len(msg)) + msg)
    size = struct.unpack(">i", _recv_exact(sock, 4))[0]
    if size < 4 or size > 64 * 1024 * 1024:
        raise OSError(f"bad response size {size}")
    payload = _recv_exact(sock, size)
    (cid,) = struct.unpack_from(">i", payload, 0)
    if cid != correlation_id:
        raise OSError(f"correlation id mismatch {cid} != {correlation_id}")
    return payload[4:]


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise OSError("connection closed by broker")
        buf += chunk
    return bytes(buf)


def probe_broker(host: str, port: int, timeout_s: float = 3.0,
                 auth: Optional["ClientAuth"] = None, min_brokers: int = 1) -> Optional[str]:
    """One readiness probe. Returns None when the broker serves Kafka clients (ApiVersions
    answers without error and Metadata lists at least ``min_brokers`` live brokers), else a
    reason. ``auth``: log in to a secured listener first (TLS, SASL PLAIN)."""
    try:
        with _open_connection(host, port, auth, timeout_s) as sock:
            # ApiVersions v0 (key 18): empty body; every broker must answer it.
            resp = _kafka_request(sock, 18, 0, 1, b"")
            error_code, n = struct.unpack_from(">hi", resp, 0)
            if error_code != 0:
                return f"ApiVersions error {error_code}"
            versions = {}
            for i in range(n):
                key, lo, hi = struct.unpack_from(">hhh", resp, 6 + 6 * i)
                versions[key] = (lo, hi)
            meta = versions.get(3)
            if not meta or not (meta[0] <= 4 <= meta[1]):
                return None  # cannot speak our Metadata version; ApiVersions is enough
            # Metadata v4 (key 3): topics = [] (none), allow_auto_topic_creation = false.
            resp = _kafka_request(sock, 3, 4, 2, struct.pack(">ib", 0, 0))
            (_throttle, n_brokers) = struct.unpack_from(">ii", resp, 0)
            if n_brokers < min_brokers:
                return f"{n_brokers} of {min_brokers} brokers live in metadata"
            return None
    except (OSError, struct.error) as exc:
        return f"{type(exc).__name__}: {exc}"


def wait_until_ready(host: str, port: int, timeout_s: float = DEFAULT_TIMEOUT_S,
                     proc: Optional[subprocess.Popen] = None, pid: Optional[int] = None,
                     interval_s: float = 0.25, auth: Optional["ClientAuth"] = None,
                     min_brokers: int = 1) -> None:
    """Poll until host:port answers Kafka requests. Raises LocalKafkaError on timeout or if
    the broker process (``proc`` / ``pid``) exits first."""
    local_services.wait_until_answers(
        lambda: probe_broker(host, port, timeout_s=min(5.0, max(0.5, timeout_s)), auth=auth,
                             min_brokers=min_brokers),
        timeout_s, what="broker", where=f"{host}:{port}", proc=proc, pid=pid, interval_s=interval_s)


# --------------------------------------------------------------------------- processes


def _is_our_broker(pid: int, state_dir: Path) -> bool:
    """pid is alive and (where /proc exists) runs kafka.Kafka with this state dir's config."""
    return local_services.runs(pid, MAIN_CLASS, str(state_dir / SERVER_PROPERTIES))


def _read_pid(state_dir: Path) -> Optional[int]:
    return local_services.read_pid(state_dir / PID_FILE)


def _read_meta(state_dir: Path) -> dict:
    try:
        return json.loads((state_dir / META_FILE).read_text())
    except (OSError, ValueError):
        return {}


# --------------------------------------------------------------------------- config


def _new_cluster_id() -> str:
    """Same format as Kafka's Uuid.randomUuid().toString(): url-safe base64, no padding."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def _server_properties(state_dir: Path, port: int, controller_port: int,
                       security: Optional[dict[str, str]] = None, *, node_id: int = NODE_ID,
                       voters: Optional[dict[int, int]] = None) -> str:
    """The broker's configuration; ``security`` (from _security_properties) replaces the
    PLAINTEXT listener and adds TLS, SASL and the authorizer. ``voters`` (node id ->
    controller port): the nodes of a cluster, whose topics then get replication 3 (at most
    the cluster's size) and min.insync.replicas 2."""
    data_dir = state_dir / DATA_DIR
    voters = voters or {node_id: controller_port}
    rf = str(min(3, len(voters)))
    min_isr = str(min(2, len(voters)))
    props = {
        # combined broker+controller nodes
        "process.roles": "broker,controller",
        "node.id": str(node_id),
        "controller.quorum.voters": ",".join(f"{n}@{HOST}:{p}" for n, p in sorted(voters.items())),
        "controller.listener.names": "CONTROLLER",
        "listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{port}",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(data_dir),
        # topics: the project creates its own, so no auto-creation
        "auto.create.topics.enable": "false",
        "delete.topic.enable": "true",
        "num.partitions": "1",
        "default.replication.factor": rf,
        "min.insync.replicas": min_isr,
        # internal topics (on one node, idempotence / transactions / groups work with RF 1)
        "offsets.topic.replication.factor": rf,
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.replication.factor": rf,
        "transaction.state.log.min.isr": min_isr,
        "transaction.state.log.num.partitions": "1",
        "share.coordinator.state.topic.replication.factor": rf,
        "share.coordinator.state.topic.min.isr": min_isr,
        "group.initial.rebalance.delay.ms": "0",
        # small footprint for a shared 2-core dev box
        "num.network.threads": "2",
        "num.io.threads": "4",
        "num.recovery.threads.per.data.dir": "1",
        "log.retention.hours": "168",
    }
    props |= security or {}
    lines = ["# generated by scripts/local_kafka.py; rewritten on every start"]
    lines += [f"{k}={v}" for k, v in props.items()]
    return "\n".join(lines) + "\n"


LOG4J2_PROPERTIES = """\
# generated by scripts/local_kafka.py: everything goes to stdout, which is redirected
# into broker.log in the state dir
status = warn
name = local-kafka
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.authorizer.name = kafka.authorizer.logger
logger.authorizer.level = WARN
logger.zk.name = org.apache.zookeeper
logger.zk.level = WARN
"""


def _jvm_opts(state_dir: Path, heap_opts: str = DEFAULT_HEAP_OPTS) -> list[str]:
    heap = os.environ.get("KAFKA_HEAP_OPTS") or heap_opts
    extra = os.environ.get("KAFKA_JVM_OPTS") or DEFAULT_JVM_OPTS
    return heap.split() + extra.split() + [
        f"-Dlog4j2.configurationFile={state_dir / LOG4J_PROPERTIES}",
        f"-Dkafka.logs.dir={state_dir}",
    ]


# --------------------------------------------------------------------------- security


def security_modes(security: str | Sequence[str]) -> tuple[str, ...]:
    """``"sasl_ssl"`` or ``("sasl_ssl", "ssl")`` -> a checked tuple of modes, no repeats."""
    modes = (security,) if isinstance(security, str) else tuple(security)
    modes = tuple(dict.fromkeys(m.lower() for m in modes))
    unknown = [m for m in modes if m not in SECURITY_MODES]
    if not modes or unknown:
        raise LocalKafkaError(f"security={security!r}: expected one of {', '.join(SECURITY_MODES)}")
    if "plaintext" in modes and len(modes) > 1:
        raise LocalKafkaError("plaintext cannot be combined with secured listeners")
    return modes


def _is_secured(modes: Sequence[str]) -> bool:
    return tuple(modes) != ("plaintext",)


def _listener(mode: str) -> str:
    return mode.upper()  # SASL_SSL, SSL, SASL_PLAINTEXT: listener name = security protocol


@dataclass(frozen=True)
class ClientAuth:
    """How this script logs in to a secured listener (as the admin super user)."""
    mode: str
    ca_file: Optional[Path] = None
    cert_file: Optional[Path] = None
    key_file: Optional[Path] = None
    username: Optional[str] = None
    password: Optional[str] = field(default=None, repr=False)


def _run_openssl(args: list[str], cwd: Path) -> None:
    openssl = shutil.which("openssl")
    if not openssl:
        raise LocalKafkaError("openssl not found on PATH; it makes the secured broker's "
                              "certificates (`apt-get install openssl`)")
    proc = subprocess.run([openssl, *args], cwd=str(cwd), stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)
    if proc.returncode != 0:
        raise LocalKafkaError(f"openssl {args[0]} failed (exit {proc.returncode}): {proc.stdout.strip()}")


def _make_tls(state_dir: Path, users: Sequence[str]) -> None:
    """A CA, the broker's key store (key + certificate for 127.0.0.1) and one client
    certificate per user (CN = the user name), all PEM, in <state>/tls."""
    tls = state_dir / TLS_DIR
    tls.mkdir(mode=0o700, exist_ok=True)
    days = "3650"
    _run_openssl(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", days,
                  "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=clickstream local Kafka CA",
                  "-addext", "basicConstraints=critical,CA:TRUE",
                  "-addext", "keyUsage=critical,keyCertSign,cRLSign"], tls)
    (tls / "leaf.ext").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in (BROKER_USER, *users):
        _run_openssl(["req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
                      "-out", f"{name}.csr", "-subj", f"/CN={name}"], tls)
        _run_openssl(["x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                      "-set_serial", f"0x{secrets.token_hex(8)}", "-days", days,
                      "-extfile", "leaf.ext", "-out", f"{name}.pem"], tls)
        (tls / f"{name}.csr").unlink()
    # Kafka's PEM key store: the private key (unencrypted PKCS#8) and the certificate chain.
    (tls / "broker-keystore.pem").write_text(
        (tls / "broker.key").read_text() + (tls / "broker.pem").read_text() + (tls / "ca.pem").read_text())
    for path in tls.iterdir():
        path.chmod(0o600)


def _load_credentials(state_dir: Path) -> dict[str, str]:
    try:
        return json.loads((state_dir / CREDENTIALS_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _write_private(path: Path, text: str) -> None:
    """Like _write_atomic, readable by the owner only (passwords)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _jaas(module: str, options: dict[str, str]) -> str:
    return f"{module} required " + " ".join(f'{k}="{v}"' for k, v in options.items()) + ";"


def _security_properties(state_dir: Path, modes: Sequence[str], ports: dict[str, int],
                         controller_port: int, credentials: dict[str, str]) -> dict[str, str]:
    names = [_listener(m) for m in modes]
    props = {
        "listeners": ",".join(f"{_listener(m)}://{HOST}:{ports[m]}" for m in modes)
                     + f",CONTROLLER://{HOST}:{controller_port}",
        "advertised.listeners": ",".join(f"{_listener(m)}://{HOST}:{ports[m]}" for m in modes),
        "inter.broker.listener.name": names[0],
        "listener.security.protocol.map": ",".join(["CONTROLLER:PLAINTEXT", *(f"{n}:{n}" for n in names)]),
        "authorizer.class.name": AUTHORIZER_CLASS,
        # ANONYMOUS is only ever the principal on the PLAINTEXT controller listener (loopback),
        # where the broker half of this node talks to its controller half.
        "super.users": f"User:{BROKER_USER};User:{ADMIN_USER};User:ANONYMOUS",
        "allow.everyone.if.no.acl.found": "false",
    }
    tls = state_dir / TLS_DIR
    if any(m in ("ssl", "sasl_ssl") for m in modes):
        props |= {
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(tls / "broker-keystore.pem"),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(tls / "ca.pem"),
            # The certificate's CN is the user: CN=replayer -> User:replayer.
            "ssl.principal.mapping.rules": "RULE:^CN=([^,]+)$/$1/,DEFAULT",
        }
    if "ssl" in modes:
        props["listener.name.ssl.ssl.client.auth"] = "required"  # mutual TLS
    sasl = [m for m in modes if m.startswith("sasl")]
    if sasl:
        props["sasl.enabled.mechanisms"] = ",".join(("PLAIN", *SCRAM_MECHANISMS))
        props["sasl.mechanism.inter.broker.protocol"] = "PLAIN"
        plain = _jaas("org.apache.kafka.common.security.plain.PlainLoginModule",
                      {"username": BROKER_USER, "password": credentials[BROKER_USER]}
                      | {f"user_{user}": password for user, password in credentials.items()})
        for mode in sasl:
            prefix = f"listener.name.{mode}"
            props[f"{prefix}.plain.sasl.jaas.config"] = plain
            for mechanism in SCRAM_MECHANISMS:
                props[f"{prefix}.{mechanism.lower()}.sasl.jaas.config"] = (
                    "org.apache.kafka.common.security.scram.ScramLoginModule required;")
    return props


def _scram_argfile(state_dir: Path, credentials: dict[str, str]) -> Path:
    """StorageTool's --add-scram options in a 0600 @argfile, so that no password is ever
    on a command line (the process list)."""
    lines = []
    for user, password in credentials.items():
        for mechanism in SCRAM_MECHANISMS:
            lines += ["--add-scram", f"{mechanism}=[name={user},password={password}]"]
    path = state_dir / ".scram-args"
    _write_private(path, "\n".join(lines) + "\n")
    return path


def _client_auth(state_dir: Path, mode: str, user: str = ADMIN_USER) -> Optional[ClientAuth]:
    """How ``user`` logs in to the ``mode`` listener (None for plaintext)."""
    if mode == "plaintext":
        return None
    tls = state_dir / TLS_DIR
    ca_file = tls / "ca.pem" if mode in ("ssl", "sasl_ssl") else None
    if mode == "ssl":
        return ClientAuth(mode=mode, ca_file=ca_file, cert_file=tls / f"{user}.pem", key_file=tls / f"{user}.key")
    password = _load_credentials(state_dir).get(user)
    if password is None:
        raise LocalKafkaError(f"no user {user!r} in {state_dir / CREDENTIALS_FILE}")
    return ClientAuth(mode=mode, ca_file=ca_file, username=user, password=password)


def client_environment(state_dir: Path, mode: str, port: int, user: str = REPLAY_USER) -> dict[str, str]:
    """The KAFKA_* variables a client (the project, clickstream-tail) needs to connect as
    ``user`` to the ``mode`` listener; the variables that do not apply map to ''."""
    env = {"KAFKA_BOOTSTRAP_SERVERS": f"{HOST}:{port}", "KAFKA_SECURITY_PROTOCOL": mode.upper()}
    env |= dict.fromkeys(
        ("KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD",
         "KAFKA_SSL_CAFILE", "KAFKA_SSL_CERTFILE", "KAFKA_SSL_KEYFILE"), "")
    auth = _client_auth(Path(state_dir), mode, user)
    if auth is None:
        return env
    if auth.ca_file:
        env["KAFKA_SSL_CAFILE"] = str(auth.ca_file)
    if auth.cert_file:
        if not auth.cert_file.is_file():
            raise LocalKafkaError(f"no certificate for user {user!r} in {auth.cert_file.parent}")
        env |= {"KAFKA_SSL_CERTFILE": str(auth.cert_file), "KAFKA_SSL_KEYFILE": str(auth.key_file)}
    if auth.username:
        env |= {"KAFKA_SASL_MECHANISM": CLIENT_MECHANISM[mode], "KAFKA_SASL_USERNAME": auth.username,
                "KAFKA_SASL_PASSWORD": auth.password or ""}
    return env


def shell_exports(env: dict[str, str]) -> str:
    """``export`` lines for the set variables, ``unset`` for the rest: for ``eval``."""
    lines = [f"export {k}={shlex.quote(v)}" for k, v in env.items() if v]
    unset = [k for k, v in env.items() if not v]
    if unset:
        lines.append("unset " + " ".join(unset))
    return "\n".join(lines)


# ACLs: (resource type, resource name, pattern type, operation), all ALLOW for any host.
ACL_RESOURCE_TYPES = {"topic": 2, "group": 3, "cluster": 4, "transactional_id": 5}
ACL_PATTERN_TYPES = {"literal": 3, "prefixed": 4}
ACL_OPERATIONS = {"READ": 3, "WRITE": 4, "CREATE": 5, "DELETE": 6, "ALTER": 7, "DESCRIBE": 8,
                  "IDEMPOTENT_WRITE": 12}


def replay_acls(delivery: str, topic: str = REPLAY_TOPIC, *, topic_pattern: str = "literal",
                checkpoint_topic: str = CHECKPOINT_TOPIC, create_topics: bool = True,
                ) -> list[tuple[str, str, str, str]]:
    """The ACLs a replay's principal needs, per delivery mode (the README's table).

    exactly_once writes the topic and its checkpoint in Kafka transactions (a transactional
    id per topic, ``clickstream-replay-<topic>``); at_least_once needs no transactional id
    (since Kafka 3.0 WRITE on a topic also allows idempotent producing). CREATE only if the
    replay creates missing topics (``create_topic``, the default)."""
    if delivery not in ("exactly_once", "at_least_once"):
        raise LocalKafkaError(f"delivery={delivery!r}: expected exactly_once or at_least_once")
    create = ("CREATE",) if create_topics else ()
    acls = [("topic", topic, topic_pattern, op) for op in ("WRITE", "DESCRIBE", *create)]
    acls += [("topic", checkpoint_topic, "literal", op) for op in ("READ", "WRITE", "DESCRIBE", *create)]
    if delivery == "exactly_once":
        acls += [("transactional_id", TRANSACTIONAL_ID_PREFIX, "prefixed", op) for op in ("WRITE", "DESCRIBE")]
    return acls


def reader_acls(topic: str = REPLAY_TOPIC, *, topic_pattern: str = "literal") -> list[tuple[str, str, str, str]]:
    """What clickstream-tail (or any group-less, assigned reader) needs on the topic."""
    return [("topic", topic, topic_pattern, op) for op in ("READ", "DESCRIBE")]


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack(">h", len(data)) + data


def _open_connection(host: str, port: int, auth: Optional[ClientAuth], timeout_s: float) -> socket.socket:
    """A connection that has passed TLS and SASL (PLAIN) as ``auth`` says; plain TCP if None."""
    sock = socket.create_connection((host, port), timeout=timeout_s)
    try:
        sock.settimeout(timeout_s)
        if auth is not None and auth.mode in ("ssl", "sasl_ssl"):
            context = ssl.create_default_context(cafile=str(auth.ca_file))
            if auth.cert_file:
                context.load_cert_chain(str(auth.cert_file), str(auth.key_file))
            sock = context.wrap_socket(sock, server_hostname=host)
        if auth is not None and auth.mode.startswith("sasl"):
            # SaslHandshake v1 (key 17), then SaslAuthenticate v0 (key 36) with PLAIN.
            resp = _kafka_request(sock, 17, 1, 101, _string("PLAIN"))
            (error_code,) = struct.unpack_from(">h", resp, 0)
            if error_code != 0:
                raise OSError(f"SaslHandshake(PLAIN) error {error_code}")
            token = b"\0" + auth.username.encode() + b"\0" + auth.password.encode()
            resp = _kafka_request(sock, 36, 0, 102, struct.pack(">i", len(token)) + token)
            (error_code,) = struct.unpack_from(">h", resp, 0)
            if error_code != 0:
                raise OSError(f"SASL PLAIN authentication of {auth.username!r} failed (error {error_code})")
        return sock
    except BaseException:
        sock.close()
        raise


def create_acls(host: str, port: int, auth: Optional[ClientAuth], principal: str,
                acls: Sequence[tuple[str, str, str, str]], timeout_s: float = 30.0) -> None:
    """Allow ``principal`` (``User:name``) every (resource type, name, pattern, operation) in
    ``acls`` from any host: one CreateAcls v1 request (key 30). Adding an existing ACL is a no-op."""
    body = struct.pack(">i", len(acls))
    for resource_type, name, pattern, operation in acls:
        body += (struct.pack(">b", ACL_RESOURCE_TYPES[resource_type]) + _string(name)
                 + struct.pack(">b", ACL_PATTERN_TYPES[pattern]) + _string(principal) + _string("*")
                 + struct.pack(">bb", ACL_OPERATIONS[operation], 3))  # 3 = ALLOW
    try:
        with _open_connection(host, port, auth, timeout_s) as sock:
            resp = _kafka_request(sock, 30, 1, 103, body)
    except (OSError, struct.error) as exc:
        raise LocalKafkaError(f"creating ACLs for {principal} on {host}:{port} failed: "
                              f"{type(exc).__name__}: {exc}") from exc
    _throttle, count = struct.unpack_from(">ii", resp, 0)
    offset, problems = 8, []
    for acl in acls[:count]:
        error_code, length = struct.unpack_from(">hh", resp, offset)
        offset += 4
        message = ""
        if length >= 0:
            message = resp[offset:offset + length].decode(errors="replace")
            offset += length
        if error_code != 0:
            problems.append(f"{acl}: error {error_code} {message}")
    if problems:
        raise LocalKafkaError(f"the broker refused ACLs for {principal}: " + "; ".join(problems))


# --------------------------------------------------------------------------- broker


@dataclass
class Broker:
    state_dir: Path
    port: int
    controller_port: int
    pid: int
    host: str = HOST
    already_running: bool = False
    node_id: int = NODE_ID
    proc: Optional[subprocess.Popen] = field(default=None, repr=False, compare=False)
    # security mode -> port of its listener; the first one's port is ``port``
    listeners: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.listeners:
            self.listeners = {"plaintext": self.port}

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def security(self) -> tuple[str, ...]:
        return tuple(self.listeners)

    def client_environment(self, mode: Optional[str] = None, user: str = REPLAY_USER) -> dict[str, str]:
        """The KAFKA_* variables for ``user`` on the ``mode`` listener (default: the first)."""
        mode = mode or self.security[0]
        if mode not in self.listeners:
            raise LocalKafkaError(f"this broker has no {mode} listener (it has {', '.join(self.listeners)})")
        return client_environment(self.state_dir, mode, self.listeners[mode], user)

    def grant(self, user: str, acls: Sequence[tuple[str, str, str, str]]) -> None:
        """Create ALLOW ACLs for ``User:<user>`` (through the admin user)."""
        mode = self.security[0]
        create_acls(self.host, self.listeners[mode], _client_auth(self.state_dir, mode),
                    f"User:{user}", acls)

    @property
    def log_path(self) -> Path:
        return self.state_dir / LOG_FILE

    @property
    def data_dir(self) -> Path:
        return self.state_dir / DATA_DIR

    @property
    def pid_path(self) -> Path:
        return self.state_dir / PID_FILE

    def is_running(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return pid_alive(self.pid)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> bool:
        """Stop this broker (SIGTERM, bounded wait, SIGKILL). True if it was running."""
        with _state_lock(self.state_dir):
            was_running = _terminate(self.pid, timeout_s, self.proc)
            if _read_pid(self.state_dir) == self.pid:
                with contextlib.suppress(FileNotFoundError):
                    self.pid_path.unlink()
        return was_running


def _terminate(pid: int, timeout_s: float, proc: Optional[subprocess.Popen] = None) -> bool:
    return local_services.stop(pid, timeout_s, proc=proc, what="broker")


def running_broker(state_dir: Path) -> Optional[Broker]:
    """The broker recorded in state_dir if its process is alive, else None."""
    state_dir = Path(state_dir).resolve()
    pid = _read_pid(state_dir)
    if pid is None or not _is_our_broker(pid, state_dir):
        return None
    meta = _read_meta(state_dir)
    port = int(meta.get("port", DEFAULT_PORT))
    listeners = {m: int(p) for m, p in (meta.get("listeners") or {"plaintext": port}).items()}
    return Broker(state_dir=state_dir, port=port,
                  controller_port=int(meta.get("controller_port", 0)), pid=pid,
                  already_running=True, listeners=listeners,
                  node_id=int(meta.get("node_id", NODE_ID)))


def _format_storage(java: str, classpath: str, state_dir: Path, cluster_id: str,
                    credentials: Optional[dict[str, str]] = None) -> None:
    cmd = [java, "-Xmx256m", f"-Dlog4j2.configurationFile={state_dir / LOG4J_PROPERTIES}",
           "-cp", classpath, STORAGE_TOOL_CLASS, "format",
           "-t", cluster_id, "-c", str(state_dir / SERVER_PROPERTIES)]
    argfile = _scram_argfile(state_dir, credentials) if credentials else None
    if argfile is not None:
        cmd.append(f"@{argfile}")  # SCRAM users, from a file: no password in the process list
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=180)
    finally:
        if argfile is not None:
            with contextlib.suppress(FileNotFoundError):
                argfile.unlink()
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout or "").splitlines()[-40:])
        raise LocalKafkaError(f"formatting KRaft storage failed (exit {proc.returncode}):\n"
                              f"{tail}")


def _spawn(java: str, classpath: str, state_dir: Path, heap_opts: str = DEFAULT_HEAP_OPTS) -> subprocess.Popen:
    """Run the node configured in ``state_dir`` (its own session; pid file, log rotated)."""
    cmd = [java, *_jvm_opts(state_dir, heap_opts), "-cp", classpath, MAIN_CLASS,
           str(state_dir / SERVER_PROPERTIES)]
    return local_services.start(cmd, state_dir, log_file=LOG_FILE, pid_file=PID_FILE, keep_previous_log=True)


def start_broker(state_dir: Path | str = DEFAULT_STATE_DIR, port: Optional[int] = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S, *,
                 cache_dir: Optional[Path | str] = None,
                 security: str | Sequence[str] = "plaintext",
                 users: Sequence[str] = (),
                 broker_properties: Optional[dict[str, str]] = None) -> Broker:
    """Start (or find already running) the broker of ``state_dir`` and wait until ready.

    ``port`` defaults to env KAFKA_PORT, else 9092 (9093 when secured). Returns a Broker; its
    ``already_running`` is True when it was up before the call (then ``port`` is the
    port it actually runs on, which may differ from the requested one).

    ``security``: "plaintext", or one or more of "sasl_ssl", "ssl", "sasl_plaintext": one
    listener each (the first on ``port``, the others on free ports), users ``admin``,
    ``replayer`` and ``users`` (passwords, certificates), the replayer's ACLs granted.
    A state dir keeps the security it was first formatted with.
    ``broker_properties``: server.properties entries set over the defaults (a test's broker
    that must outlast a pause, for instance).
    Raises LocalKafkaError (with the broker log tail) on failure.
    """
    state_dir = Path(state_dir).resolve()
    modes = security_modes(security)
    secured = _is_secured(modes)
    if port is None:
        port = int(os.environ.get("KAFKA_PORT") or (SECURED_DEFAULT_PORT if secured else DEFAULT_PORT))
    with _state_lock(state_dir):
        meta = _read_meta(state_dir)
        if meta.get("nodes"):
            raise LocalKafkaError(f"{state_dir} holds a cluster of {len(meta['nodes'])} brokers: "
                                  f"use another --state-dir, or --brokers {len(meta['nodes'])}")
        data_dir = state_dir / DATA_DIR
        formatted = (data_dir / "meta.properties").is_file()
        wanted_users = [ADMIN_USER, REPLAY_USER, *(u for u in users if u not in (ADMIN_USER, REPLAY_USER))]
        if formatted and (tuple(meta.get("security") or ("plaintext",)) != modes
                          or (secured and not set(wanted_users) <= set(meta.get("users") or ()))):
            raise LocalKafkaError(
                f"{state_dir} holds a broker formatted for security {'+'.join(meta.get('security') or ['plaintext'])}"
                f" and users {meta.get('users') or []}; asked for {'+'.join(modes)} and {wanted_users}: "
                f"use another --state-dir, or remove this one")
        existing = running_broker(state_dir)
        if existing is not None:
            wait_until_ready(HOST, existing.port, timeout_s, pid=existing.pid,
                             auth=_client_auth(state_dir, modes[0]))
            return existing
        pid_file = state_dir / PID_FILE
        if pid_file.exists():
            _log(f"removing stale pid file {pid_file} (pid {_read_pid(state_dir)} is gone)")
            pid_file.unlink()

        java = _find_java()
        if not port_is_free(port):
            raise LocalKafkaError(
                f"port {port} on {HOST} is already in use by another process (not a broker "
                f"started from {state_dir}); pick another with --port / KAFKA_PORT")
        classpath = resolve_classpath(
            state_dir, Path(cache_dir) if cache_dir else None)

        controller_port = int(meta.get("controller_port") or 0)
        if not controller_port or controller_port == port or not port_is_free(controller_port):
            controller_port = free_port(exclude=(port,))
        listeners = {modes[0]: port}
        for mode in modes[1:]:
            previous = int((meta.get("listeners") or {}).get(mode) or 0)
            taken = (controller_port, *listeners.values())
            listeners[mode] = previous if previous and previous not in taken and port_is_free(previous) \
                else free_port(exclude=taken)
        cluster_id = meta.get("cluster_id") if formatted else None
        cluster_id = cluster_id or _new_cluster_id()
        credentials = _load_credentials(state_dir) if formatted else {}
        if secured and not formatted:
            credentials = {user: secrets.token_hex(16) for user in (BROKER_USER, *wanted_users)}
            _write_private(state_dir / CREDENTIALS_FILE, json.dumps(credentials, indent=2) + "\n")
            if any(m in ("ssl", "sasl_ssl") for m in modes):
                _make_tls(state_dir, wanted_users)
        meta.update(port=port, controller_port=controller_port, cluster_id=cluster_id,
                    kafka_version=kafka_version(), host=HOST)
        if secured:
            meta.update(security=list(modes), listeners=listeners,
                        users=meta.get("users") if formatted else wanted_users)
        _write_atomic(state_dir / META_FILE, json.dumps(meta, indent=2) + "\n")
        if secured:
            properties = _server_properties(
                state_dir, port, controller_port,
                _security_properties(state_dir, modes, listeners, controller_port, credentials)
                | (broker_properties or {}))
            _write_private(state_dir / SERVER_PROPERTIES, properties)  # JAAS passwords inside
        else:
            _write_atomic(state_dir / SERVER_PROPERTIES,
                          _server_properties(state_dir, port, controller_port, broker_properties))
        _write_atomic(state_dir / LOG4J_PROPERTIES, LOG4J2_PROPERTIES)

        if not formatted:
            data_dir.mkdir(parents=True, exist_ok=True)
            _format_storage(java, classpath, state_dir, cluster_id,
                            credentials if any(m.startswith("sasl") for m in modes) else None)

        log_path = state_dir / LOG_FILE
        proc = _spawn(java, classpath, state_dir)
        broker = Broker(state_dir=state_dir, port=port, controller_port=controller_port,
                        pid=proc.pid, proc=proc, listeners=listeners)
        try:
            wait_until_ready(HOST, port, timeout_s, proc=proc, auth=_client_auth(state_dir, modes[0]))
            if secured:
                # Through the admin user, as any client would: the replayer may replay (both
                # delivery modes) into click-data* and read it back.
                broker.grant(REPLAY_USER, replay_acls("exactly_once", REPLAY_TOPIC, topic_pattern="prefixed")
                             + reader_acls(REPLAY_TOPIC, topic_pattern="prefixed"))
        except LocalKafkaError as exc:
            with contextlib.suppress(Exception):
                _terminate(proc.pid, 10.0, proc)
            with contextlib.suppress(FileNotFoundError):
                pid_file.unlink()
            raise LocalKafkaError(
                f"{exc}\n--- tail of {log_path} ---\n{_tail(log_path)}") from None
        return broker


def stop_broker(state_dir: Path | str = DEFAULT_STATE_DIR,
                timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """Stop the broker (or every node of the cluster) started from ``state_dir``. True if
    one was running."""
    state_dir = Path(state_dir).resolve()
    nodes = _read_meta(state_dir).get("nodes")
    if nodes:
        # All at once: a node stopped after the quorum's majority waits for it in vain.
        running = [b for b in (running_broker(_node_dir(state_dir, n["node_id"])) for n in nodes) if b]
        for node in running:
            local_services.signal_session(node.pid, signal.SIGTERM)
        for n in nodes:
            stop_broker(_node_dir(state_dir, n["node_id"]), timeout_s)
        return bool(running)
    with _state_lock(state_dir):
        pid = _read_pid(state_dir)
        was_running = False
        if pid is not None and _is_our_broker(pid, state_dir):
            was_running = _terminate(pid, timeout_s)
        with contextlib.suppress(FileNotFoundError):
            (state_dir / PID_FILE).unlink()
    return was_running


# --------------------------------------------------------------------------- cluster


def _node_dir(state_dir: Path, node_id: int) -> Path:
    return state_dir / f"node-{node_id}"


@dataclass
class Cluster:
    """A KRaft cluster of combined broker+controller nodes, one state dir each
    (``<state>/node-<id>``, laid out as a single broker's)."""
    state_dir: Path
    nodes: list[Broker]  # every node, running or not, by node id
    already_running: bool = False
    cache_dir: Optional[Path] = None  # of the resolved classpath (default: the state dir)

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(node.bootstrap_servers for node in self.nodes)

    def node(self, node_id: int) -> Broker:
        return next(node for node in self.nodes if node.node_id == node_id)

    def start_node(self, node_id: int, timeout_s: float = DEFAULT_TIMEOUT_S) -> Broker:
        """(Re)start one node on its own port and data dir; waits until it serves clients."""
        old = self.node(node_id)
        if old.is_running():
            return old
        with _state_lock(old.state_dir):
            proc = _spawn(_find_java(), resolve_classpath(self.state_dir, self.cache_dir),
                          old.state_dir, CLUSTER_HEAP_OPTS)
        node = Broker(state_dir=old.state_dir, port=old.port, controller_port=old.controller_port,
                      pid=proc.pid, proc=proc, node_id=node_id)
        self.nodes[self.nodes.index(old)] = node
        try:
            wait_until_ready(HOST, node.port, timeout_s, proc=proc)
        except LocalKafkaError as exc:
            raise LocalKafkaError(f"node {node_id}: {exc}\n--- tail of {node.log_path} ---\n"
                                  f"{_tail(node.log_path)}") from None
        return node

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> bool:
        return stop_broker(self.state_dir, timeout_s)


def running_cluster(state_dir: Path) -> Optional[Cluster]:
    """The cluster recorded in ``state_dir`` (nodes not running have pid 0), else None."""
    state_dir = Path(state_dir).resolve()
    nodes = []
    for n in _read_meta(state_dir).get("nodes") or ():
        node_dir = _node_dir(state_dir, n["node_id"])
        nodes.append(running_broker(node_dir) or Broker(
            state_dir=node_dir, port=n["port"], controller_port=n["controller_port"], pid=0,
            node_id=n["node_id"]))
    return Cluster(state_dir, nodes, already_running=True) if nodes else None


def start_cluster(state_dir: Path | str, brokers: int = 3, port: Optional[int] = None,
                  timeout_s: float = DEFAULT_TIMEOUT_S, *,
                  cache_dir: Optional[Path | str] = None) -> Cluster:
    """Start (or find running) a cluster of ``brokers`` nodes sharing one cluster id, with
    replication 3 and min.insync.replicas 2, and wait until every node sees all of them.

    Ports ``port``, ``port + 1``, ... (default: those of the last start, else $KAFKA_PORT,
    else 9092); ``port=0``: any free ones. Nodes that are down while others run come back on
    their own ports."""
    if brokers < 2:
        raise LocalKafkaError(f"brokers={brokers}: a cluster has at least 2 (else start_broker)")
    state_dir = Path(state_dir).resolve()
    with _state_lock(state_dir):
        meta = _read_meta(state_dir)
        if (state_dir / DATA_DIR).exists() or len(meta.get("nodes") or [None] * brokers) != brokers:
            raise LocalKafkaError(
                f"{state_dir} holds a broker of {len(meta.get('nodes') or [1])} node(s); asked for "
                f"{brokers}: use another --state-dir, or remove this one")
        cluster = running_cluster(state_dir)
        if cluster and all(node.pid for node in cluster.nodes):
            cluster.cache_dir = Path(cache_dir) if cache_dir else None
            for node in cluster.nodes:
                wait_until_ready(HOST, node.port, timeout_s, pid=node.pid, min_brokers=brokers)
            return cluster
        java = _find_java()
        classpath = resolve_classpath(state_dir, Path(cache_dir) if cache_dir else None)
        if cluster is None or not any(node.pid for node in cluster.nodes):
            # None running: (re)configure every node; the quorum's ports go in every config.
            old = {n["node_id"]: n for n in meta.get("nodes") or ()}
            if port is None and not old:
                port = int(os.environ.get("KAFKA_PORT") or DEFAULT_PORT)
            ports: list[int] = []
            for i in range(brokers):
                wanted = (old[i + 1]["port"] if port is None else
                          free_port(exclude=tuple(ports)) if port == 0 else port + i)
                if not port_is_free(wanted):
                    raise LocalKafkaError(f"port {wanted} on {HOST} (node {i + 1}) is already in "
                                          f"use; pick another with --port / KAFKA_PORT")
                ports.append(wanted)
            controllers: list[int] = []
            for i in range(brokers):
                previous = int(old.get(i + 1, {}).get("controller_port") or 0)
                taken = (*ports, *controllers)
                controllers.append(previous if previous and previous not in taken and port_is_free(previous)
                                   else free_port(exclude=taken))
            meta.update(brokers=brokers, cluster_id=meta.get("cluster_id") or _new_cluster_id(),
                        kafka_version=kafka_version(), host=HOST,
                        nodes=[{"node_id": i + 1, "port": ports[i], "controller_port": controllers[i]}
                               for i in range(brokers)])
            _write_atomic(state_dir / META_FILE, json.dumps(meta, indent=2) + "\n")
            voters = {n["node_id"]: n["controller_port"] for n in meta["nodes"]}
            for n in meta["nodes"]:
                node_dir = _node_dir(state_dir, n["node_id"])
                node_dir.mkdir(exist_ok=True)
                _write_atomic(node_dir / META_FILE, json.dumps(n, indent=2) + "\n")
                _write_atomic(node_dir / SERVER_PROPERTIES, _server_properties(
                    node_dir, n["port"], n["controller_port"], node_id=n["node_id"], voters=voters))
                _write_atomic(node_dir / LOG4J_PROPERTIES, LOG4J2_PROPERTIES)
                if not (node_dir / DATA_DIR / "meta.properties").is_file():
                    (node_dir / DATA_DIR).mkdir(exist_ok=True)
                    _format_storage(java, classpath, node_dir, meta["cluster_id"])
            cluster = running_cluster(state_dir)
        cluster.cache_dir = Path(cache_dir) if cache_dir else None
        started = []
        try:
            for i, node in enumerate(cluster.nodes):
                if not node.pid:
                    proc = _spawn(java, classpath, node.state_dir, CLUSTER_HEAP_OPTS)
                    cluster.nodes[i] = node = Broker(
                        state_dir=node.state_dir, port=node.port, controller_port=node.controller_port,
                        pid=proc.pid, proc=proc, node_id=node.node_id)
                    started.append(node)
            cluster.already_running = False
            for node in cluster.nodes:
                try:
                    wait_until_ready(HOST, node.port, timeout_s, proc=node.proc, pid=node.pid,
                                     min_brokers=brokers)
                except LocalKafkaError as exc:
                    raise LocalKafkaError(f"node {node.node_id}: {exc}\n--- tail of {node.log_path} "
                                          f"---\n{_tail(node.log_path)}") from None
        except BaseException:
            for node in started:
                with contextlib.suppress(Exception):
                    node.stop(10.0)
            raise
        return cluster


# --------------------------------------------------------------------------- CLI


def _state_dir(args: argparse.Namespace) -> Path:
    """--state-dir, else .kafka (plaintext), .kafka-<security> (one per secured mode) or
    .kafka-cluster (--brokers N)."""
    if args.state_dir:
        return Path(args.state_dir).resolve()
    if args.brokers > 1:
        return REPO_ROOT / ".kafka-cluster"
    security = getattr(args, "security", "plaintext")
    return DEFAULT_STATE_DIR if security == "plaintext" else REPO_ROOT / f".kafka-{security}"


def _cmd_up_cluster(args: argparse.Namespace) -> int:
    if args.security != "plaintext":
        raise LocalKafkaError(f"--brokers {args.brokers}: a cluster is plaintext only "
                              f"(--security {args.security} is for a single broker)")
    t0 = time.monotonic()
    cluster = start_cluster(_state_dir(args), args.brokers, args.port, args.timeout,
                            cache_dir=args.cache_dir)
    pids = ", ".join(str(node.pid) for node in cluster.nodes)
    if cluster.already_running:
        print(f"Kafka cluster of {args.brokers} brokers already up (pids {pids})")
    else:
        print(f"Kafka {kafka_version()} cluster of {args.brokers} brokers up in "
              f"{time.monotonic() - t0:.1f}s (pids {pids}; replication 3, min.insync.replicas 2)")
    print(f"  bootstrap servers: {cluster.bootstrap_servers}")
    print(f"  data dirs:         {cluster.state_dir}/node-*/{DATA_DIR}")
    print(f"  log files:         {cluster.state_dir}/node-*/{LOG_FILE}")
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    if args.brokers > 1:
        return _cmd_up_cluster(args)
    state_dir = _state_dir(args)
    secured = args.security != "plaintext"
    # Secured: stdout carries only the `export` lines (for eval), the rest goes to stderr.
    say = _log if secured else print
    t0 = time.monotonic()
    cache_dir = args.cache_dir
    if secured and not cache_dir and not os.environ.get("KAFKA_CLASSPATH_CACHE_DIR"):
        cache_dir = DEFAULT_STATE_DIR  # share the plaintext broker's resolved classpath
    broker = start_broker(state_dir, args.port, args.timeout, cache_dir=cache_dir,
                          security=args.security)
    if broker.already_running:
        note = ""
        if args.port is not None and args.port != broker.port:
            note = f" (requested port {args.port} ignored: `down` first to change it)"
        say(f"Kafka broker already up (pid {broker.pid}) on "
            f"{broker.bootstrap_servers}{note}")
    else:
        say(f"Kafka {kafka_version()} broker up in {time.monotonic() - t0:.1f}s "
            f"(pid {broker.pid})")
    say(f"  bootstrap servers: {broker.bootstrap_servers}")
    say(f"  data dir:          {broker.data_dir}")
    say(f"  log file:          {broker.log_path}")
    if secured:
        say(f"  security:          {args.security.upper()}, StandardAuthorizer; users "
            f"{ADMIN_USER} (super user), {REPLAY_USER} (may replay into and read {REPLAY_TOPIC}*)")
        say(f"  settings of {args.user} on stdout: eval \"$(python3 scripts/local_kafka.py env "
            f"--security {args.security})\"")
        print(shell_exports(broker.client_environment(args.security, args.user)))
    return 0


def _cmd_env(args: argparse.Namespace) -> int:
    state_dir = _state_dir(args)
    broker = running_broker(state_dir)
    if broker is None:
        raise LocalKafkaError(f"no Kafka broker running for state dir {state_dir}")
    if args.security not in broker.listeners:
        raise LocalKafkaError(f"the broker of {state_dir} has no {args.security} listener "
                              f"(it has {', '.join(broker.listeners)})")
    print(shell_exports(broker.client_environment(args.security, args.user)))
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    state_dir = _state_dir(args)
    cluster = running_cluster(state_dir)
    pids = [node.pid for node in cluster.nodes if node.pid] if cluster else [_read_pid(state_dir)]
    if stop_broker(state_dir, args.timeout):
        print(f"Kafka {'cluster' if cluster else 'broker'} stopped "
              f"(pid {', '.join(map(str, pids))}, state dir {state_dir})")
    else:
        print(f"no Kafka broker running for state dir {state_dir}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    state_dir = _state_dir(args)
    cluster = running_cluster(state_dir)
    if cluster is not None:
        running = [node for node in cluster.nodes if node.pid]
        print(f"Kafka cluster: {len(running)} of {len(cluster.nodes)} brokers running "
              f"(state dir {state_dir})")
        for node in cluster.nodes:
            reason = probe_broker(HOST, node.port, min_brokers=len(cluster.nodes)) if node.pid else "not running"
            print(f"  node {node.node_id} on {node.bootstrap_servers}: "
                  + (f"pid {node.pid}, " if node.pid else "") + ("ready" if reason is None else reason))
        print(f"  bootstrap servers: {cluster.bootstrap_servers}")
        return 0 if len(running) == len(cluster.nodes) else 1
    broker = running_broker(state_dir)
    if broker is None:
        print(f"Kafka broker not running (state dir {state_dir})")
        return 1
    reason = probe_broker(HOST, broker.port, auth=_client_auth(state_dir, broker.security[0]))
    ready = "ready" if reason is None else f"not answering yet: {reason}"
    print(f"Kafka broker running (pid {broker.pid}) on {broker.bootstrap_servers}, {ready}")
    print(f"  log file: {broker.log_path}")
    return 0


def _cmd_logs(args: argparse.Namespace) -> int:
    state_dir = _state_dir(args)
    nodes = _read_meta(state_dir).get("nodes")
    for node_dir in [_node_dir(state_dir, n["node_id"]) for n in nodes] if nodes else [state_dir]:
        if nodes:
            print(f"--- {node_dir / LOG_FILE} ---")
        print(_tail(node_dir / LOG_FILE, args.lines))
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="local_kafka.py",
        description="Run an Apache Kafka broker, or a cluster of them (KRaft), on 127.0.0.1, no Docker.")
    sub = parser.add_subparsers(dest="command", required=True)

    def add_state(p: argparse.ArgumentParser) -> None:
        p.add_argument("--security", default="plaintext", choices=SECURITY_MODES,
                       help="plaintext (default), or a secured listener: TLS + SASL SCRAM/PLAIN, "
                            "mutual TLS, or SASL PLAIN/SCRAM without TLS; picks the default state dir")
        p.add_argument("--brokers", type=int, default=1,
                       help="1 (default), or N: a KRaft cluster of N brokers (replication 3, "
                            "min.insync.replicas 2, plaintext) on ports --port, --port + 1, ...; "
                            "picks the default state dir .kafka-cluster")
        p.add_argument("--state-dir", default=None,
                       help=f"pid file, logs, config and data (default: {DEFAULT_STATE_DIR}, "
                            f".kafka-<security> when secured, .kafka-cluster for --brokers N)")

    up = sub.add_parser("up", help="start the broker (no-op if already up)")
    up.add_argument("--port", type=int, default=None,
                    help=f"the listener's port (default: $KAFKA_PORT, else {DEFAULT_PORT}, "
                         f"or {SECURED_DEFAULT_PORT} when secured); a cluster's first node's, "
                         f"or 0: any free ports")
    up.add_argument("--user", default=REPLAY_USER,
                    help="secured: whose settings to print (default: %(default)s; or admin)")
    add_state(up)
    up.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                    help="seconds to wait for readiness (default: %(default)s)")
    up.add_argument("--cache-dir", default=None,
                    help="where to cache the resolved classpath "
                         "(default: $KAFKA_CLASSPATH_CACHE_DIR or the state dir)")
    up.set_defaults(func=_cmd_up)

    down = sub.add_parser("down", help="stop the broker started from the state dir")
    add_state(down)
    down.add_argument("--timeout", type=float, default=STOP_TIMEOUT_S,
                      help="seconds to wait after SIGTERM before SIGKILL")
    down.set_defaults(func=_cmd_down)

    env = sub.add_parser("env", help="print the `export KAFKA_...` lines of a running secured broker")
    add_state(env)
    env.add_argument("--user", default=REPLAY_USER, help="whose settings (default: %(default)s; or admin)")
    env.set_defaults(func=_cmd_env)

    status = sub.add_parser("status", help="exit 0 if the broker is running, else 1")
    add_state(status)
    status.set_defaults(func=_cmd_status)

    logs = sub.add_parser("logs", help="print the end of the broker's log (each node's, for a cluster)")
    add_state(logs)
    logs.add_argument("--lines", type=int, default=60, help="how many (default: %(default)s)")
    logs.set_defaults(func=_cmd_logs)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except LocalKafkaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
