"""The processes a swarm command forks (hivemind's): where signals reach them, and the shared-memory files that killed
ones leave in /dev/shm, which are found and removed, and nothing else is."""

from __future__ import annotations

import mmap
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from cli_process import TAKE_THE_TERMINAL, is_running

from swarm.processes import (
    SHARED_MEMORY_DIR,
    kill_session,
    remove_orphaned_shared_memory,
    remove_stale_hivemind_sockets,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


_FORKS_A_CHILD = """
import multiprocessing, os, time
import swarm.processes

def child():
    print(os.getpid(), os.getpgid(0), os.getsid(0), flush=True)
    time.sleep(60)

multiprocessing.get_context("fork").Process(target=child).start()
time.sleep(60)
"""


@pytest.mark.timeout(60)
def test_forked_children_leave_the_terminals_job_but_stay_in_the_session_and_die_with_it():
    """A terminal's Ctrl-C goes to its foreground job, and hivemind's p2p daemon died of it: the children a swarm
    command forks get process groups of their own, in the session of the command."""
    parent = subprocess.Popen([sys.executable, "-c", _FORKS_A_CHILD], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                              text=True, start_new_session=True)
    try:
        child, group, session = map(int, parent.stdout.readline().split())
        assert os.getpgid(parent.pid) == parent.pid and group == child and session == parent.pid
        assert kill_session(parent.pid) == 2
        assert parent.wait(timeout=10) == -signal.SIGKILL
        deadline = time.monotonic() + 10
        while is_running(child):
            assert time.monotonic() < deadline, "the forked child outlived its session's kill"
            time.sleep(0.05)
    finally:
        if parent.poll() is None:
            parent.kill()
    with pytest.raises(ValueError):
        kill_session(1)


_FORKED_CHILD_WRITES = """
import multiprocessing, sys
import swarm.processes
child = multiprocessing.get_context("fork").Process(target=lambda: print("the child wrote", flush=True))
child.start()
child.join(20)
print("child exit code", child.exitcode, flush=True)
"""


@pytest.mark.timeout(90)
def test_a_forked_child_writes_to_a_terminal_set_to_tostop_without_being_stopped():
    """Out of the terminal's foreground job, a child that writes to it is stopped when the terminal has `stty
    tostop` (its DHT process would freeze at its first log line), unless it ignores SIGTTOU."""
    import select
    import termios

    master, terminal = os.openpty()
    settings = termios.tcgetattr(terminal)
    settings[3] |= termios.TOSTOP
    termios.tcsetattr(terminal, termios.TCSANOW, settings)
    command = [sys.executable, "-c", TAKE_THE_TERMINAL, sys.executable, "-c", _FORKED_CHILD_WRITES]
    parent = subprocess.Popen(command, stdin=terminal, stdout=terminal, stderr=terminal, cwd=REPO_ROOT,
                              start_new_session=True)
    os.close(terminal)
    output, deadline = b"", time.monotonic() + 70
    try:
        # to the end of its line: a read can end within it (a flake under load: b"...child exit code" alone)
        while not re.search(rb"child exit code \S+\r?\n", output) and time.monotonic() < deadline:
            if select.select([master], [], [], 0.5)[0]:
                try:
                    output += os.read(master, 4096)
                except OSError:  # the terminal closed: everything was read
                    break
    finally:
        if parent.poll() is None:
            kill_session(parent.pid)
        parent.wait(timeout=10)
        os.close(master)
    assert b"the child wrote" in output and b"child exit code 0" in output, output


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


def test_a_file_that_a_running_process_maps_is_kept_until_it_lets_go(tmp_path):
    orphan = tmp_path / f"torch_{_dead_pid()}_77_1"
    orphan.write_bytes(b"x" * 4096)
    old = time.time() - 3600
    os.utime(orphan, (old, old))
    with orphan.open("r+b") as file:
        mapping = mmap.mmap(file.fileno(), 4096)  # as torch does: mapped, then the file closed
    try:
        assert remove_orphaned_shared_memory(tmp_path, min_age_s=60) == (0, 0)
        assert orphan.exists()
    finally:
        mapping.close()
    assert remove_orphaned_shared_memory(tmp_path, min_age_s=60) == (1, 4096)
    assert not orphan.exists()


TENSOR_FROM_AN_EXITED_PROCESS = textwrap.dedent(
    """
    import gc, glob, os, time
    import hivemind  # noqa: F401 (sets torch's file_system sharing, as in every swarm process)
    import torch
    import torch.multiprocessing as mp
    from swarm.processes import remove_orphaned_shared_memory

    def make(queue, received):
        queue.put(torch.full((1024,), 7.0).share_memory_())
        received.wait()

    if __name__ == "__main__":
        context = mp.get_context("fork")
        queue, received = context.Queue(), context.Event()
        child = context.Process(target=make, args=(queue, received))
        child.start()
        tensor = queue.get(timeout=60)
        received.set()
        child.join()
        files = glob.glob(f"/dev/shm/torch_{child.pid}_*")
        assert files, "the child's tensor is not in /dev/shm"
        old = time.time() - 3600
        for path in files:
            os.utime(path, (old, old))  # an hour old: what a peer that starts later finds
        remove_orphaned_shared_memory()
        assert tensor.sum().item() == 7.0 * 1024
        del tensor
        gc.collect()  # torch unlinks the file here and aborted when it was gone
        print("freed", flush=True)
    """
)


@pytest.mark.skipif(not SHARED_MEMORY_DIR.is_dir(), reason="no /dev/shm")
def test_a_process_holding_a_tensor_from_an_exited_process_survives_another_peers_cleanup(tmp_path):
    """Every swarm process clears /dev/shm at start. A file whose creator exited is still in use when another process
    holds the tensor (an averager process hands its tensors to the training process). Deleted, the holder died later
    when it freed the tensor: torch could not unlink the file and aborted (very likely how a CI run of this suite
    died)."""
    script = tmp_path / "holder.py"
    script.write_text(TENSOR_FROM_AN_EXITED_PROCESS)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert result.returncode == 0 and result.stdout.strip() == "freed", result.stderr[-3000:]


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


def test_only_old_hivemind_sockets_that_nothing_listens_on_are_removed(tmp_path):
    import socket

    def make(name: str, listen: bool, age_s: float) -> tuple[Path, socket.socket]:
        path = tmp_path / name
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(path))
        if listen:
            sock.listen()
        os.utime(path, (time.time() - age_s, time.time() - age_s))
        return path, sock

    stale, _ = make("hivemind-p2pclient-AbC_d-1.sock", listen=False, age_s=3600)
    stale_daemon, _ = make("hivemind-p2pd-xYz.sock", listen=False, age_s=3600)
    live, listener = make("hivemind-p2pd-live.sock", listen=True, age_s=3600)
    young, _ = make("hivemind-p2pclient-new.sock", listen=False, age_s=1)
    other, _ = make("someone-else.sock", listen=False, age_s=3600)
    not_a_socket = tmp_path / "hivemind-p2pd-file.sock"
    not_a_socket.write_text("")
    os.utime(not_a_socket, (time.time() - 3600, time.time() - 3600))
    try:
        assert remove_stale_hivemind_sockets(tmp_path) == 2
    finally:
        listener.close()
    assert not stale.exists() and not stale_daemon.exists()
    assert live.exists() and young.exists() and other.exists() and not_a_socket.exists()
    assert remove_stale_hivemind_sockets(tmp_path / "missing") == 0
