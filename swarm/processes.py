"""Child processes die with their parent. Imported for its side effect (Linux; a no-op elsewhere).

hivemind runs its DHT node and every averager in forked processes (each DHT with its own `p2pd`). If a
coordinator or volunteer is killed with SIGKILL (OOM killer, `kill -9`, a crashed container), those children
live on: they keep the peer's identity and port, so the restarted process is refused with "identity already
taken", and a stale node keeps answering for it. Seen here: after `kill -9` of a coordinator, its DHT
process, its p2pd and its state averager were all still running.

Every process forked from Python after this import asks the kernel for SIGTERM when its parent dies
(prctl PR_SET_PDEATHSIG). A DHT process that dies this way takes its p2pd down with it through hivemind's own
shutdown path. hivemind forks its processes from the main thread, which lives as long as the process, so the
signal only fires when the whole parent is gone.

Those processes also leave the process group they were born in, for one of their own. A terminal sends Ctrl-C to
every process of its foreground job, and a p2p daemon dies of it: the coordinator's did (the volunteer's happened to
ignore it), so a coordinator stopped with Ctrl-C while peers trained could not fetch their state for its final
version. Now only the main process gets the terminal's signals, and it stops its children through hivemind's
shutdown, as it does after `kill -INT PID`. A service stop still reaches them all: systemd signals every process of
the unit's cgroup, whatever its group.

hivemind shares tensors between those processes with torch's `file_system` strategy: files in /dev/shm named
`torch_<pid>_...`, normally removed by torch_shm_manager. A process tree killed as a whole (OOM killer, `kill -9` of
the group, a container stop) takes the manager with it and leaves the files: RAM that no process owns, until reboot.
Seen here: 22,658 such files, 8.8 GB, after a day of killed peers, and a later run killed by the OOM killer.
`remove_orphaned_shared_memory()` deletes the ones whose process is gone and that no running process maps; every swarm
process calls it at start. A file outlives its creator when another process still uses it (an averager process hands
its tensors to the training process), and deleting such a file kills that process later: torch aborts it when it
frees the tensor and cannot unlink the file, very likely what killed a CI run of the test suite (SIGABRT).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import math
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    libc = _libc()
    if libc is not None:  # else no libc to talk to: keep hivemind's default behaviour
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


def _leave_the_terminals_job() -> None:
    try:
        os.setpgid(0, 0)
    except OSError:  # not allowed here (a session leader cannot): Ctrl-C reaches this process as before
        return
    try:  # a background job that writes to a terminal set to `stty tostop` is stopped, unless it ignores SIGTTOU
        signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    except (ValueError, OSError):
        pass


def _signals_as_hivemind_expects() -> None:
    """A forked child ignores Ctrl-C (its parent stops it through hivemind's shutdown) and dies of SIGTERM, whatever
    handlers its parent had installed: a child of a volunteer that set its handlers before starting hivemind would
    otherwise run them."""
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    except (ValueError, OSError):  # forked from a thread that is not the interpreter's main thread
        pass


def _after_fork_in_child() -> None:
    _die_with_parent()
    _leave_the_terminals_job()
    _signals_as_hivemind_expects()


@contextlib.contextmanager
def keeping_ctrl_c() -> Iterator[None]:
    """While hivemind starts its averagers in this process, keep its Ctrl-C handler.

    `DecentralizedAverager.run_in_background` sets SIGINT to SIG_IGN in the parent so that the forked averager
    inherits it, and never sets it back: a Ctrl-C from then until the caller installed its handlers again (the rest
    of a volunteer's start-up) was dropped without a word. Forked children ignore SIGINT anyway
    (`_signals_as_hivemind_expects`), so that setting is skipped here.
    """
    original, pid = signal.signal, os.getpid()

    def guarded(signum, handler):
        if signum == signal.SIGINT and handler is signal.SIG_IGN and os.getpid() == pid:
            return signal.getsignal(signal.SIGINT)
        return original(signum, handler)

    signal.signal = guarded
    try:
        yield
    finally:
        signal.signal = original


if sys.platform.startswith("linux"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def start_shared_memory_manager() -> None:
    """Start torch's shared-memory manager now, immune to SIGTERM and SIGINT; call it before hivemind's first use.

    hivemind's processes share tensors (and its futures' state) through torch's `file_system` strategy, whose
    torch_shm_manager process torch starts on first use. A SIGTERM to every process of a volunteer (systemd's
    default stop, a container stop) killed the manager with the rest, and the volunteer, still finishing its epoch,
    aborted ("terminate called after throwing an instance of 'std::system_error' what(): Broken pipe") when it next
    freed a shared tensor. Signals ignored at the manager's start stay ignored in it (it is forked and exec'd by
    torch), and it exits by itself once the last process using it has gone.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    import torch.multiprocessing

    if torch.multiprocessing.get_sharing_strategy() != "file_system":
        return
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        torch.empty(1).share_memory_()  # the first shared tensor of this process starts the manager
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


SHARED_MEMORY_DIR = Path("/dev/shm")
_TORCH_SEGMENT = re.compile(r"^torch_(\d+)_")


def kill_session(session_id: int | None = None) -> int:
    """SIGKILL every process of a session this user may signal (default: this process's own), this process last; how
    many were signalled.

    A whole peer at once, as a power cut, the OOM killer taking a container, or `kill -9` of all its processes would:
    for tests and benchmarks that start a peer with `start_new_session`. A process group is not enough any more, since
    hivemind's processes leave the group of the peer's main process (see above); they stay in its session.
    """
    own = os.getsid(0)
    session = own if session_id is None else session_id
    if session <= 1:
        raise ValueError(f"not killing session {session}")
    me, signalled = os.getpid(), 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            if int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[3]) == session:
                os.kill(int(entry), signal.SIGKILL)
                signalled += 1
        except (OSError, ValueError, IndexError):  # gone meanwhile, or another user's
            continue
    if session == own:
        os.kill(me, signal.SIGKILL)
    return signalled


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _mapped_torch_files() -> tuple[set[tuple[int, int]], set[str]] | None:
    """The `torch_...` files that processes this user can inspect map now, as (device, inode) pairs and as paths
    (a stacked filesystem may show other numbers than stat); None without /proc.

    torch maps a shared tensor's file and closes it, so a mapping is the only sign that a process uses one.
    """
    try:
        pids = [name for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return None
    numbers, paths = set(), set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/maps", "rb") as maps:
                for line in maps:
                    if b"torch_" not in line:
                        continue
                    fields = line.rstrip(b"\n").split(maxsplit=5)  # address perms offset major:minor inode path
                    if len(fields) == 6:
                        major, minor = fields[3].split(b":")
                        numbers.add((os.makedev(int(major, 16), int(minor, 16)), int(fields[4])))
                        paths.add(os.fsdecode(fields[5].removesuffix(b" (deleted)")))
        except (OSError, ValueError):  # gone meanwhile, or another user's process (it cannot open our files)
            continue
    return numbers, paths


def remove_orphaned_shared_memory(folder: Path = SHARED_MEMORY_DIR, min_age_s: float = 60.0) -> tuple[int, int]:
    """Delete torch shared-memory files of this user whose creating process no longer runs and that no process maps:
    (files, bytes) freed.

    Files younger than `min_age_s` are kept (a process that just created one may be handing it over), as is
    anything not named `torch_<pid>_...` or owned by another user, and everything when /proc cannot be read.
    """
    try:
        entries = list(os.scandir(folder))
    except OSError:  # no /dev/shm (macOS) or not readable
        return 0, 0
    now, uid = time.time(), os.getuid()
    candidates = []
    for entry in entries:
        match = _TORCH_SEGMENT.match(entry.name)
        if match is None or _running(int(match.group(1))):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if info.st_uid == uid and now - info.st_mtime >= min_age_s:
            candidates.append((entry, info))
    if not candidates:
        return 0, 0
    mapped = _mapped_torch_files()  # read only when there is something to delete: it reads every process's maps
    if mapped is None:
        return 0, 0
    numbers, paths = mapped
    removed = freed = 0
    for entry, info in candidates:
        if (info.st_dev, info.st_ino) in numbers or os.path.abspath(entry.path) in paths:
            continue
        try:
            os.unlink(entry.path)
        except OSError:
            continue
        removed += 1
        freed += info.st_size
    return removed, freed


HIVEMIND_SOCKET_DIR = Path("/tmp")
_HIVEMIND_SOCKET = re.compile(r"^hivemind-p2p(d|client)-.+\.sock$")


def remove_stale_hivemind_sockets(folder: Path = HIVEMIND_SOCKET_DIR, min_age_s: float = 60.0) -> int:
    """Delete the unix sockets of this user's hivemind p2p daemons and clients that nothing listens on any more;
    how many.

    Each DHT node and averager process makes one or two in /tmp and removes them only on a clean shutdown of its
    daemon: killed peers, and averager processes, leave theirs. Seen here: 3,400 of them after some days of tests. A
    socket is stale when connecting to it is refused; one younger than `min_age_s` is kept (its owner may be between
    creating it and listening on it), as is anything another user owns.
    """
    import socket
    import stat

    try:
        entries = [entry for entry in os.scandir(folder) if _HIVEMIND_SOCKET.match(entry.name)]
    except OSError:
        return 0
    now, uid, removed = time.time(), os.getuid(), 0
    for entry in entries:
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISSOCK(info.st_mode) or info.st_uid != uid or now - info.st_mtime < min_age_s:
            continue
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            try:
                probe.connect(entry.path)
                continue  # a live daemon or client
            except ConnectionRefusedError:
                pass
            except OSError:  # anything else (a full backlog, a timeout): leave it be
                continue
        try:
            os.unlink(entry.path)
            removed += 1
        except OSError:
            continue
    return removed


def shared_memory_advice(needed_bytes: int, folder: Path = SHARED_MEMORY_DIR) -> str:
    """How to give hivemind `needed_bytes` of shared memory."""
    suggest_gb = max(1, math.ceil((needed_bytes * 1.25 + 2**28) / 2**30))
    return (f"this peer needs about {needed_bytes / 2**20:.0f} MB in {folder}: hivemind hands the model's tensors to "
            f"its averaging processes through shared memory. In Docker, start the container with "
            f"--shm-size={suggest_gb}g (or --ipc=host); elsewhere, free space in {folder}.")


def shared_memory_problem(needed_bytes: int, folder: Path = SHARED_MEMORY_DIR) -> str | None:
    """What to tell a user whose shared-memory folder has less room than `needed_bytes`; None if it fits (or the
    folder cannot be read: then torch's own error is all there is).

    torch raises "unable to allocate shared memory" once /dev/shm is full. Docker gives a container 64 MB of it by
    default, and hivemind's averagers need tens of bytes per parameter there.
    """
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return None
    if free >= needed_bytes:
        return None
    return f"{folder} has {free / 2**20:.0f} MB free, and " + shared_memory_advice(needed_bytes, folder)


def share_with_forked_processes(tensors) -> int:
    """Move CPU tensors into shared memory before hivemind forks a process; returns the bytes moved.

    A forked child shares its parent's memory copy-on-write: once the parent writes a page (an optimiser step writes
    every parameter), the parent gets a fresh copy and the child keeps the old one for the rest of its life, though
    it never reads it. hivemind forks its averager processes after the model and optimiser exist, so each of them
    held a stale private copy of whatever the training process later rewrote: measured on a CPU peer of GPT-2 small
    (124M) in DiLoCo mode, 0.55 GB in one averager and 1.0-1.1 GB in the other. Pages in shared memory are not
    copied on write, so a child costs nothing for them. Tensors already shared, or on an accelerator (the host holds
    none of their pages), are left alone.
    """
    moved = 0
    for tensor in tensors:
        if tensor is None or tensor.device.type != "cpu" or tensor.is_shared() or tensor.numel() == 0:
            continue
        tensor.share_memory_()
        moved += tensor.numel() * tensor.element_size()
    return moved


@functools.lru_cache(maxsize=1)
def _libc():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


def trim_heap() -> None:
    """Hand the allocator's free pages back to the kernel (glibc's malloc_trim; a no-op elsewhere). Call it before a
    fork: the child does not inherit pages that are gone.

    A forked child keeps every page the parent writes afterwards, and the parent's heap holds freed memory that it
    soon reuses (tensors of a few MB live there, and moving them to shared memory frees them): measured on a DiLoCo
    CPU peer of GPT-2 small, 330 MB of such pages in one averager, 15 MB with the trim. (Freezing the garbage
    collector across the fork, tried too, changed nothing measurable.)
    """
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
