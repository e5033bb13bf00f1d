"""What an organiser sets on `swarm launch`, and the checks of those flags that need neither the recipe nor torch.

Kept free of heavy imports: `swarm launch` runs these checks before it imports torch, transformers and hivemind
(4-6 s on a 2-core machine), so a mistyped flag is named at once. The folders the recipe names are checked by the
coordinator once the recipe is loaded.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from swarm.errors import UsageError


@dataclass
class CoordinatorSettings:
    host: str = "0.0.0.0"
    port: int = 31337
    announce_host: str | None = None
    initial_peers: list[str] = field(default_factory=list)  # other coordinators/bootstrap nodes of the same run
    state_dir: str | None = None  # default: runs/<run_id>/coordinator
    checkpoint_dir: str | None = None  # overrides recipe.checkpoint.dir
    final_model_dir: str | None = None  # also write the final version here (the demo's output folder)
    ledger_dir: str | None = None  # default: <checkpoint dir>/../ledger, next to the checkpoints
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int | None = 8080  # None: no dashboard; 0: any free port
    summary_file: str | None = None
    cache_dir: str | None = None


def check_launch_flags(s: CoordinatorSettings) -> None:
    """Ports in range, the dashboard's address free, and every folder a flag names usable; nothing is written."""
    if not 0 <= s.port <= 65535:
        raise UsageError(f"--port {s.port}: use a TCP port from 1 to 65535, or 0 for any free port")
    if s.dashboard_port is not None and not 0 <= s.dashboard_port <= 65535:
        raise UsageError(f"--dashboard-port {s.dashboard_port} is not a TCP port: use 1-65535, 0 for any free "
                         "port, or -1 for no dashboard")
    for flag, folder in (("--state-dir", s.state_dir), ("--checkpoint-dir", s.checkpoint_dir),
                         ("--ledger-dir", s.ledger_dir), ("--final-model-dir", s.final_model_dir)):
        if folder:
            check_folder(Path(folder), flag)
    if s.summary_file:
        summary = Path(s.summary_file)
        if summary.is_dir():
            raise UsageError(f"--summary-file {summary} is a folder: give the path of a file (it is written at "
                             "the end of the run)")
        check_folder(summary.parent, f"the folder of --summary-file {summary}")
    if s.dashboard_port is not None:  # a port that is taken fails now, not after the data and the DHT are up
        check_dashboard_address(s.dashboard_host, s.dashboard_port)


def check_folder(path: Path, what: str) -> None:
    """A folder the coordinator writes to must be one (or creatable): checked before anything is written."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"{what} {path} is a file, not a folder: give a folder (it is created if missing)")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{what} {path} cannot be created: {parent} is a file, not a folder; give another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{what} {path}: {parent} is not writable by this user; give a folder it can write to")


def check_dashboard_address(host: str, port: int) -> None:
    """Bind the dashboard's address once and let it go, as the server will bind it (SO_REUSEADDR included)."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as error:
        raise dashboard_error(host, port, error) from None


def dashboard_error(host: str, port: int, error: OSError) -> UsageError:
    return UsageError(f"the dashboard cannot listen on {host}:{port} ({error.strerror or error}): choose another "
                      "--dashboard-port, 0 for any free one, or -1 for no dashboard")
