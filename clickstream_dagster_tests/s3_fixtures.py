"""pytest plugin: a real S3-compatible server (s3proxy) for the tests of CLICKSTREAM_STORAGE_DIR=s3://...

Enable with ``pytest_plugins = ["clickstream_dagster_tests.s3_fixtures"]``.

* ``s3_server`` (session): s3proxy (Maven Central, ``org.gaul:s3proxy``) with jclouds'
  ``filesystem-nio2`` backend in a temporary directory, on a free 127.0.0.1 port, requiring AWS
  signatures with a random access key and secret; stopped at the end of the session. Started,
  waited for and stopped by the launcher layer (scripts/local_services.py: its own session,
  ``s3proxy.log`` and ``s3proxy.pid`` in its directory). Its classpath is resolved by
  ``mvn dependency:build-classpath`` over ``scripts/s3proxy/pom.xml`` once and cached
  (``$KAFKA_CLASSPATH_CACHE_DIR`` or the repo's ``.kafka/``, next to the broker's; the jars live
  in ``~/.m2``).
* ``s3_bucket`` (function): a fresh bucket on that server; ``s3_env`` (function): the standard
  AWS variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``,
  ``AWS_REGION``) a process needs to reach it, and ``CLICKSTREAM_STORAGE_DIR`` under the bucket.

``S3PROXY_START_TIMEOUT_S`` (default 120) bounds the start.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from clickstream_dagster_tests.kafka_fixtures import REPO_ROOT, _classpath_cache_dir, load_local_services

services = load_local_services()

POM_PATH = REPO_ROOT / "scripts" / "s3proxy" / "pom.xml"
START_TIMEOUT_S = float(os.environ.get("S3PROXY_START_TIMEOUT_S") or 120)
REGION = "us-east-1"
STOP_TIMEOUT_S = 30.0

# s3proxy logs through logback and defaults to DEBUG without a configuration.
_LOGBACK = """<configuration>
  <appender name="OUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%d{HH:mm:ss.SSS} %-5level %logger{0} - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="OUT"/></root>
</configuration>
"""


def s3proxy_version(pom_path: Path = POM_PATH) -> str:
    return services.pom_property(pom_path, "s3proxy.version")


def resolve_classpath(cache_dir: Path) -> str:
    """s3proxy's classpath: the cached one if its jars are all still there, else Maven's."""
    version = s3proxy_version()
    cache_file = cache_dir / f"s3proxy-{version}.classpath"
    return services.resolve_classpath(POM_PATH, cache_file, f"s3proxy {version}")


@dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    base_dir: Path  # the filesystem backend's root: one directory per bucket
    proc: subprocess.Popen
    log_path: Path

    def env(self) -> dict[str, str]:
        """The standard AWS variables, as a deployment would set them."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": REGION,
        }

    def filesystem(self):
        """An s3fs filesystem on this server (fresh: no listing cache shared with other tests)."""
        import s3fs

        return s3fs.S3FileSystem(
            key=self.access_key, secret=self.secret_key, endpoint_url=self.endpoint,
            client_kwargs={"region_name": REGION}, skip_instance_cache=True,
        )  # fmt: skip

    def create_bucket(self) -> str:
        name = f"clickstream-{uuid.uuid4().hex[:12]}"
        self.filesystem().call_s3("create_bucket", Bucket=name)
        return name

    def tail(self, lines: int = 60) -> str:
        return services.tail(self.log_path, lines)


def _answers(endpoint: str) -> str | None:
    """None once s3proxy answers HTTP, else why not."""
    try:
        urllib.request.urlopen(endpoint, timeout=2).close()
    except urllib.error.HTTPError:
        return None  # 403 without a signature: it is up
    except OSError as error:
        return str(error)
    return None


def start_s3proxy(root: Path, port: int, classpath: str) -> S3Server:
    base_dir = root / "objects"
    base_dir.mkdir()
    endpoint = f"http://127.0.0.1:{port}"
    access_key, secret_key = f"AKTEST{secrets.token_hex(6).upper()}", secrets.token_urlsafe(24)
    properties = {
        "s3proxy.endpoint": endpoint,
        "s3proxy.authorization": "aws-v2-or-v4",
        "s3proxy.identity": access_key,
        "s3proxy.credential": secret_key,
        # botocore >= 1.36 sends x-amz-checksum-* headers on uploads; s3proxy rejects headers
        # it does not know unless told to ignore them (gaul/s3proxy#1041). The client stays as
        # it would be against AWS.
        "s3proxy.ignore-unknown-headers": "true",
        "jclouds.provider": "filesystem-nio2",
        "jclouds.filesystem.basedir": str(base_dir),
    }
    (root / "s3proxy.conf").write_text("".join(f"{k}={v}\n" for k, v in properties.items()))
    (root / "logback.xml").write_text(_LOGBACK)
    proc = services.start(
        [services.find_java(), f"-Dlogback.configurationFile={root / 'logback.xml'}", "-cp", classpath,
         "org.gaul.s3proxy.Main", "--properties", str(root / "s3proxy.conf")],
        root, log_file="s3proxy.log", pid_file="s3proxy.pid",
    )  # fmt: skip
    server = S3Server(endpoint, access_key, secret_key, base_dir, proc, root / "s3proxy.log")
    try:
        services.wait_until_answers(
            lambda: _answers(endpoint), START_TIMEOUT_S, what="s3proxy", where=endpoint, proc=proc, interval_s=0.2
        )
    except services.ServiceError as error:
        stop_s3proxy(server)
        raise services.ServiceError(f"{error}:\n{server.tail()}") from None
    return server


def stop_s3proxy(server: S3Server) -> None:
    services.stop(server.proc.pid, STOP_TIMEOUT_S, proc=server.proc, what="s3proxy")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    try:
        classpath = resolve_classpath(_classpath_cache_dir())
        server = start_s3proxy(tmp_path_factory.mktemp("s3proxy"), services.free_port(), classpath)
    except RuntimeError as error:
        pytest.fail(f"could not start s3proxy: {error}", pytrace=False)
    try:
        yield server
    finally:
        stop_s3proxy(server)


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    return s3_server.create_bucket()


@pytest.fixture
def s3_env(s3_server: S3Server, s3_bucket: str) -> dict[str, str]:
    """What a deployment sets: the AWS variables and the dataset's URL under the bucket."""
    return s3_server.env() | {"CLICKSTREAM_STORAGE_DIR": f"s3://{s3_bucket}/clickstream"}
