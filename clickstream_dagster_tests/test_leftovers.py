"""Temporaries of writers that are gone are removed; those of live writers or other hosts stay."""

import os
import socket
import subprocess

from clickstream_dagster.leftovers import abandoned, remove_abandoned, temporary_name


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_only_temporaries_of_dead_writers_on_this_host_are_removed(tmp_path):
    host, dead = socket.gethostname(), dead_pid()
    (tmp_path / f".2012-03-09.parquet.{dead}@{host}.1a2b3c4d.tmp").write_bytes(b"half")
    (tmp_path / f".writing.{dead}@{host}.5e6f7a8b.tmp").mkdir()
    (tmp_path / f".writing.{dead}@{host}.5e6f7a8b.tmp" / "2012-03-09.parquet").write_bytes(b"half")
    (tmp_path / f".2012-03-10.parquet.{dead}.9c0d1e2f.tmp").write_bytes(b"old format")
    live = temporary_name("2012-03-11.parquet")
    (tmp_path / live).write_bytes(b"being written")
    elsewhere = f".2012-03-12.parquet.{dead}@another-host.example.3a4b5c6d.tmp"
    (tmp_path / elsewhere).write_bytes(b"written on another host")
    (tmp_path / "2012-03-09.parquet").write_bytes(b"a day")
    (tmp_path / f"notes.{dead}.tmp").write_bytes(b"not ours")

    removed = remove_abandoned(tmp_path)

    assert sorted(removed) == sorted(
        [
            f".2012-03-09.parquet.{dead}@{host}.1a2b3c4d.tmp",
            f".writing.{dead}@{host}.5e6f7a8b.tmp",
            f".2012-03-10.parquet.{dead}.9c0d1e2f.tmp",
        ]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [live, elsewhere, "2012-03-09.parquet", f"notes.{dead}.tmp"]
    )


def test_a_name_says_its_owner():
    name = temporary_name("rejects-x.parquet")
    assert name.startswith(".rejects-x.parquet.") and f".{os.getpid()}@" in name and name.endswith(".tmp")
    assert not abandoned(name)
    assert remove_abandoned("/nonexistent/dir") == []
