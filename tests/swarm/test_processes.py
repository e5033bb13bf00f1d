"""Shared-memory files that killed hivemind processes leave in /dev/shm are found and removed, and nothing else is."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from swarm.processes import remove_orphaned_shared_memory


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_only_old_files_of_processes_that_are_gone_are_removed(tmp_path):
    dead, alive = _dead_pid(), os.getpid()
    old = time.time() - 3600
    files = {
        "orphan": tmp_path / f"torch_{dead}_123_4",
        "young_orphan": tmp_path / f"torch_{dead}_123_5",
        "live": tmp_path / f"torch_{alive}_99_1",
        "not_torch": tmp_path / f"other_{dead}_1",
    }
    for name, path in files.items():
        path.write_bytes(b"x" * 4096)
        if name != "young_orphan":
            os.utime(path, (old, old))

    removed, freed = remove_orphaned_shared_memory(tmp_path, min_age_s=60)

    assert (removed, freed) == (1, 4096)
    assert not files["orphan"].exists()
    assert files["young_orphan"].exists() and files["live"].exists() and files["not_torch"].exists()


def test_a_missing_folder_is_not_an_error(tmp_path):
    assert remove_orphaned_shared_memory(tmp_path / "absent") == (0, 0)
