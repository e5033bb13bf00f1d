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
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except OSError:  # no libc to talk to: keep hivemind's default behaviour
        pass


if sys.platform.startswith("linux"):
    os.register_at_fork(after_in_child=_die_with_parent)
