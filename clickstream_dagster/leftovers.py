"""Temporary files and directories that say who owns them, and the removal of those whose owner
is gone (a kill -9, a crash), never those of a writer still running.

A temporary's name carries its writer's process id and host: ``<stem>.<pid>@<host>.<random>.tmp``.
Leftovers are removed when their host is this one and no process with that id runs here; a
temporary of another host (shared storage) or of a live process is left alone. Nothing here
imports Dagster.
"""

import os
import re
import shutil
import socket
import uuid
from pathlib import Path

_HOST = socket.gethostname()
_OWNED = re.compile(r"\.(?P<pid>\d+)@(?P<host>[^/@]+)\.[^./]+\.tmp$")
# Written by earlier versions: ``.<file name>.<pid>.<random>.tmp`` on this host.
_LEGACY = re.compile(r"^\..+\.parquet\.(?P<pid>\d+)(\.[0-9a-f]+)?\.tmp$")


def owner_tag() -> str:
    """``<pid>@<host>`` of this process: put it right before a temporary's random part."""
    return f"{os.getpid()}@{_HOST}"


def temporary_name(stem: str) -> str:
    """A fresh name for a temporary of this process (hidden: dataset readers skip it)."""
    return f".{stem}.{owner_tag()}.{uuid.uuid4().hex[:8]}.tmp"


def abandoned(name: str) -> bool:
    """True for the name of a temporary whose writer no longer runs on this host."""
    owned = _OWNED.search(name)
    if owned:
        return owned["host"] == _HOST and not _running(int(owned["pid"]))
    legacy = _LEGACY.match(name)
    return bool(legacy) and not _running(int(legacy["pid"]))


def remove_abandoned(directory: str | Path) -> list[str]:
    """Remove the abandoned temporaries (files or directories) in ``directory``; their names."""
    try:
        entries = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed = []
    for entry in entries:
        if entry.endswith(".tmp") and abandoned(entry):
            path = os.path.join(directory, entry)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
            removed.append(entry)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: running
        return True
    return True
