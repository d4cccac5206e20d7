"""The launcher layer the local services share: the Kafka broker and its 3-node cluster
(local_kafka.py), the schema registry (local_registry.py), and the PostgreSQL server and
s3proxy the tests start (clickstream_dagster_tests/postgres_fixtures.py, s3_fixtures.py).

What every one of them does the same way lives here, once:

* resolve: a Maven artifact -> a path on disk, cached (a pom's classpath in a cache file, an
  archive in ~/.m2), so that only the first start ever calls Maven;
* start: the service's command in a session of its own (``down`` stops it and whatever it
  forked; a Ctrl-C in the terminal that started it does not), stdout and stderr appended to a
  log file in its state dir, its pid in a pid file there;
* wait: poll a probe until the service answers, failing as soon as its process exits;
* status: the pid is alive (not a zombie) and, where /proc shows it, still runs the service;
* down: SIGTERM (or the service's own shutdown signal) to the session, a bounded wait, SIGKILL;
* logs: the tail of the log file.

What a service answers, how it is configured and what it prints stay in its own script.

Standard library only: the scripts run before the project's virtualenv exists. Importable as
``local_services`` from the scripts beside it (each puts this directory on ``sys.path``, also
when a test or benchmark loads the script by path).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

HOST = "127.0.0.1"
MAVEN_TIMEOUT_S = 900.0
LOCK_FILE = ".lock"
KILL_WAIT_S = 10.0  # after SIGKILL: only the kernel is left to wait for


class ServiceError(RuntimeError):
    """A user-facing failure (its message is meant to be printed as is)."""


class NotAnswering(ServiceError):
    """The service did not answer its probe: its process exited (``exit_code``) or time ran out."""

    def __init__(self, message: str, exit_code: Optional[int] = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- ports and files


def free_port(host: str = HOST, exclude: tuple[int, ...] = ()) -> int:
    """A TCP port that is free on ``host`` right now (the kernel picks it)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in exclude:
            return port
    raise ServiceError("could not find a free TCP port")


def port_is_free(port: int, host: str = HOST) -> bool:
    """True if nothing listens on host:port (bind test, SO_REUSEADDR like the JVM)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def write_atomic(path: Path, text: str) -> None:
    """A reader sees the old file or the new one, never half of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


@contextlib.contextmanager
def state_lock(state_dir: Path) -> Iterator[None]:
    """Serialise up/down on one state dir across processes."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / LOCK_FILE, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def tail(path: Path, lines: int = 60) -> str:
    """The last ``lines`` lines of a log (read from its last 64 KiB: logs grow large)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(data.splitlines()[-lines:])


def find_java(needed: str = "Install a Java 17+ runtime") -> str:
    """$JAVA_HOME/bin/java, else java on PATH."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        cand = Path(java_home) / "bin" / "java"
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    java = shutil.which("java")
    if not java:
        raise ServiceError(
            f"java not found (no JAVA_HOME/bin/java, nothing on PATH). {needed}, "
            f"e.g. `apt-get install openjdk-17-jre-headless`."
        )
    return java


# --------------------------------------------------------------------------- resolve


def pom_property(pom_path: Path, name: str) -> str:
    """A ``<properties>`` value of a pom: the version it pins."""
    try:
        root = ET.parse(pom_path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise ServiceError(f"cannot read {pom_path}: {exc}") from exc
    node = root.find(f"m:properties/m:{name}", {"m": "http://maven.apache.org/POM/4.0.0"})
    if node is None:
        node = root.find(f"properties/{name}")
    if node is None or not (node.text or "").strip():
        raise ServiceError(f"{pom_path} has no <properties><{name}>")
    return node.text.strip()


def cached_classpath(cache_file: Path) -> Optional[str]:
    """The classpath in ``cache_file`` if every jar of it is still there, else None."""
    try:
        cp = cache_file.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    entries = [e for e in cp.split(os.pathsep) if e]
    if not entries or not all(os.path.isfile(e) for e in entries):
        return None  # jars were removed from ~/.m2: resolve again
    return cp


def _mvn(what: str, cache: Path) -> str:
    mvn = shutil.which("mvn")
    if not mvn:
        raise ServiceError(
            f"mvn (Apache Maven) not found on PATH; it is needed once to resolve the {what} "
            f"from Maven Central (cache {cache} is missing)."
        )
    return mvn


def _run_maven(cmd: list[str], what: str) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=MAVEN_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise ServiceError(f"Maven did not finish within {MAVEN_TIMEOUT_S:.0f}s: {' '.join(cmd)}") from exc
    proc.stdout = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout or "")
    return proc


def _maven_failure(what: str, cmd: list[str], proc: subprocess.CompletedProcess) -> ServiceError:
    tail_ = "\n".join(proc.stdout.splitlines()[-40:])
    return ServiceError(f"Maven failed to resolve the {what} (exit {proc.returncode}).\n"
                        f"command: {' '.join(cmd)}\n--- mvn output (tail) ---\n{tail_}")


def resolve_classpath(pom_path: Path, cache_file: Path, what: str, *, scope: Optional[str] = None) -> str:
    """The classpath of ``pom_path``'s dependencies (``what``, e.g. "Kafka 4.3.0"): the one
    cached in ``cache_file`` while its jars are all there, else ``mvn dependency:build-classpath``
    (``-Dmdep.includeScope=scope`` if given), cached for the next start."""
    cp = cached_classpath(cache_file)
    if cp:
        return cp
    what = f"{what} jars"
    mvn = _mvn(what, cache_file)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    out_file = cache_file.parent / f".{cache_file.name}.{os.getpid()}.tmp"
    cmd = [mvn, "-B", "-q", "-Dstyle.color=never", "-f", str(pom_path),
           "dependency:build-classpath", f"-Dmdep.outputFile={out_file}"]
    if scope:
        cmd.append(f"-Dmdep.includeScope={scope}")
    log(f"Resolving {what} with Maven (first start only) ...")
    t0 = time.monotonic()
    proc = _run_maven(cmd, what)
    if proc.returncode != 0 or not out_file.is_file():
        with contextlib.suppress(OSError):
            out_file.unlink()
        raise _maven_failure(what, cmd, proc)
    os.replace(out_file, cache_file)
    cp = cached_classpath(cache_file)
    if not cp:
        raise ServiceError(f"Maven produced an unusable classpath in {cache_file}")
    log(f"Resolved {len(cp.split(os.pathsep))} jars in {time.monotonic() - t0:.1f}s "
        f"(cached in {cache_file})")
    return cp


def maven_repository() -> Path:
    return Path(os.environ.get("MAVEN_REPO_LOCAL") or Path.home() / ".m2" / "repository")


def artifact_path(coordinates: str) -> Path:
    """Where the local Maven repository keeps ``group:artifact:version:packaging[:classifier]``."""
    group, artifact, version, packaging, *classifier = coordinates.split(":")
    name = f"{artifact}-{version}{''.join('-' + c for c in classifier)}.{packaging}"
    return maven_repository() / Path(*group.split(".")) / artifact / version / name


def resolve_artifact(coordinates: str) -> Path:
    """One artifact file (``group:artifact:version:packaging[:classifier]``) in the local Maven
    repository, fetched with ``mvn dependency:get`` the first time only."""
    path = artifact_path(coordinates)
    if path.is_file():
        return path
    mvn = _mvn(coordinates, path)
    cmd = [mvn, "-B", "-q", "dependency:get", f"-Dartifact={coordinates}", "-Dtransitive=false"]
    log(f"Fetching {coordinates} with Maven (first start only) ...")
    proc = _run_maven(cmd, coordinates)
    if proc.returncode != 0 or not path.is_file():
        raise _maven_failure(coordinates, cmd, proc)
    return path


# --------------------------------------------------------------------------- processes


def pid_alive(pid: int) -> bool:
    """True if ``pid`` is a live (non-zombie) process. Reaps it if it is our child."""
    if pid <= 0:
        return False
    with contextlib.suppress(ChildProcessError, OSError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        state = stat.rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return True


def runs(pid: int, *args: str) -> bool:
    """``pid`` is alive and (where /proc shows it) its command line has every one of ``args``:
    a pid file outlives its process, and the pid may since belong to another program."""
    if not pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc: trust the pid file
    running = {a.decode(errors="replace") for a in cmdline}
    return all(arg in running for arg in args)


def read_pid(pid_file: Path) -> Optional[int]:
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def start(command: Sequence[str], state_dir: Path, *, log_file: str, pid_file: Optional[str] = None,
          keep_previous_log: bool = False, user: Optional[str] = None) -> subprocess.Popen:
    """Run ``command`` in ``state_dir`` (its working directory), in a session of its own,
    stdout and stderr appended to ``<state_dir>/<log_file>`` (``keep_previous_log``: the last
    run's log moved to ``<log_file>.prev`` first), its pid written to ``<state_dir>/<pid_file>``.
    ``user``: run as that system user (PostgreSQL refuses to run as root)."""
    log_path = state_dir / log_file
    if keep_previous_log and log_path.exists():
        os.replace(log_path, state_dir / (log_file + ".prev"))
    as_user = {}
    if user is not None:
        account = pwd.getpwnam(user)
        as_user = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    with open(log_path, "ab") as log_fh:
        proc = subprocess.Popen(list(command), stdin=subprocess.DEVNULL, stdout=log_fh,
                                stderr=subprocess.STDOUT, cwd=str(state_dir),
                                start_new_session=True, close_fds=True, **as_user)
    if pid_file is not None:
        write_atomic(state_dir / pid_file, f"{proc.pid}\n")
    return proc


def wait_until_answers(probe: Callable[[], Optional[str]], timeout_s: float, *, what: str, where: str,
                       proc: Optional[subprocess.Popen] = None, pid: Optional[int] = None,
                       interval_s: float = 0.25) -> None:
    """Poll ``probe`` (None once the service answers, else why not) until it answers. Raises
    NotAnswering when time runs out or the service's process (``proc`` / ``pid``) exits first:
    no point waiting for a dead process."""
    deadline = time.monotonic() + timeout_s
    while True:
        reason = probe()
        if reason is None:
            return
        if proc is not None and proc.poll() is not None:
            raise NotAnswering(f"{what} process exited with code {proc.returncode} "
                               f"before {where} became ready", proc.returncode)
        if proc is None and pid is not None and not pid_alive(pid):
            raise NotAnswering(f"{what} process {pid} exited before {where} became ready")
        if time.monotonic() >= deadline:
            raise NotAnswering(f"{what} on {where} not ready after {timeout_s:g}s (last probe: {reason})")
        time.sleep(interval_s)


def signal_session(pid: int, sig: int) -> None:
    """``sig`` to the session ``start`` made (its process group has the leader's pid); to the
    process alone if it leads no group (it was not started here)."""
    if pid != os.getpgrp():  # never our own group
        try:
            os.killpg(pid, sig)
            return
        except (ProcessLookupError, PermissionError):
            pass
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _wait_exit(pid: int, timeout_s: float, proc: Optional[subprocess.Popen]) -> bool:
    if proc is not None:
        try:
            proc.wait(timeout=timeout_s)
            return True
        except subprocess.TimeoutExpired:
            return False
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def stop(pid: int, timeout_s: float, *, proc: Optional[subprocess.Popen] = None, what: str = "process",
         shutdown_signal: int = signal.SIGTERM) -> bool:
    """Stop the session of ``pid``: ``shutdown_signal``, up to ``timeout_s`` for it to exit,
    then SIGKILL. True if it was running; ServiceError if it survives SIGKILL."""
    if proc is not None and proc.poll() is not None:
        return False
    if proc is None and not pid_alive(pid):
        return False
    signal_session(pid, shutdown_signal)
    if _wait_exit(pid, timeout_s, proc):
        return True
    log(f"{what} pid {pid} did not stop within {timeout_s:.0f}s after "
        f"{signal.Signals(shutdown_signal).name}; SIGKILL")
    signal_session(pid, signal.SIGKILL)
    if not _wait_exit(pid, KILL_WAIT_S, proc):
        raise ServiceError(f"{what} pid {pid} survived SIGKILL")
    return True
