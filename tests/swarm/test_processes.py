"""Shared-memory files that killed hivemind processes leave in /dev/shm are found and removed, and nothing else is."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

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


def _private_mb(pid: int) -> float:
    """Memory only this process maps (pages it holds alone), from /proc/<pid>/smaps_rollup."""
    fields = {}
    for line in open(f"/proc/{pid}/smaps_rollup"):
        parts = line.split()
        if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
            fields[parts[0][:-1]] = int(parts[1])
    return (fields["Private_Clean"] + fields["Private_Dirty"]) / 1024


def _stale_copy_left_in_a_forked_child(share: bool) -> float:
    """MB a forked child holds privately after its parent rewrote a 64 MB tensor it had before the fork."""
    import torch

    from swarm.processes import share_with_forked_processes, trim_heap

    tensor = torch.ones(16 * 2**20)  # 64 MB
    if share:
        assert share_with_forked_processes([tensor, None, torch.empty(0)]) == 64 * 2**20
        assert tensor.is_shared()
        assert share_with_forked_processes([tensor]) == 0  # already shared: left alone
    read, write = os.pipe()
    trim_heap()
    pid = os.fork()
    if pid == 0:  # the child waits until the parent is done writing, touching nothing
        os.close(write)
        os.read(read, 1)
        os._exit(0)
    os.close(read)
    try:
        before = _private_mb(pid)
        tensor.fill_(2.0)  # what an optimiser step does to every parameter
        return _private_mb(pid) - before
    finally:
        os.write(write, b"x")
        os.waitpid(pid, 0)


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps_rollup"), reason="needs Linux /proc smaps_rollup")
def test_a_forked_child_keeps_no_stale_copy_of_tensors_moved_to_shared_memory_first():
    assert _stale_copy_left_in_a_forked_child(share=False) > 60  # copy-on-write left the child the old pages
    assert _stale_copy_left_in_a_forked_child(share=True) < 4
