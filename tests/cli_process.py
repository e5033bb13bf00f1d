"""Real `swarm` CLI processes for the tests that drive the commands as people do (tests/e2e, tests/coordinator).

Each process runs in a session of its own, so that a test can signal it and every process it started (as
systemd's default stop does) without touching pytest, or type Ctrl-C in its terminal, and teardown can stop
whatever the process left behind. Importable from every test folder:
tests/conftest.py puts this folder on sys.path.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def write_test_recipe(path: Path, run_id: str, **limits) -> Path:
    """The tiny recipe, made smaller and quicker: a test needs rounds, not a good model."""
    recipe = yaml.safe_load((REPO / "recipes" / "tiny-stdlib.yaml").read_text())
    recipe["run"]["id"] = run_id
    recipe["model"]["config"].update(n_layer=2, n_embd=64, n_head=2, n_positions=64)
    recipe["data"].update(seq_len=64, stdlib_max_files=80, val_fraction=0.1, val_samples=32)
    recipe["optimizer"]["schedule"].update(warmup_steps=2, total_steps=100)
    recipe["collaboration"].update(target_batch_size=256, micro_batch_size=16, matchmaking_time_s=1.5,
                                   averaging_timeout_s=15.0, average_state_every=2, load_state_timeout_s=60.0)
    recipe["checkpoint"]["every_epochs"] = 5
    recipe["limits"] = limits
    path.write_text(yaml.safe_dump(recipe))
    return path


# Run as the session leader `start_new_session` makes: take stdin (a pseudo-terminal) as the controlling terminal, which
# makes this process group its foreground job, then become the command
# a shell's foreground job: the terminal is its controlling terminal, and SIGINT is not ignored (a test run started in
# the background ignores it, and an ignored signal stays ignored across exec: a Ctrl-C there did nothing)
TAKE_THE_TERMINAL = ("import fcntl, os, signal, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
                     "signal.signal(signal.SIGINT, signal.SIG_DFL); os.execvp(sys.argv[1], sys.argv[1:])")


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (hivemind's DHT and averager processes, their p2p daemons)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, frontier = [pid], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        tree += frontier
    return tree


def is_running(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class CliProcess:
    """A `swarm` CLI process in its own session; its combined output is collected and kept in a log file.

    `prefix`: a command to run it under (e.g. `unshare ...`). `terminal`: run it as the foreground job of a
    pseudo-terminal of its own, as a shell does, so that `press_ctrl_c` acts as a person's Ctrl-C.
    """

    def __init__(self, args: list[str], log_path: Path, prefix: tuple[str, ...] = (), terminal: bool = False,
                 cwd: Path = REPO):
        env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
        env.pop("SWARM_VERBOSE", None)  # the tests read the normal output
        self.log_path = log_path
        self.lines: list[str] = []
        command = [*prefix, sys.executable, "-m", "swarm.cli", *args]
        stdin = None
        self._terminal: int | None = None  # the pseudo-terminal's master end: what a person types goes in there
        if terminal:
            self._terminal, stdin = os.openpty()
            command = [sys.executable, "-c", TAKE_THE_TERMINAL, *command]
        self.popen = subprocess.Popen(command, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, env=env, cwd=cwd, start_new_session=True)
        if terminal:
            os.close(stdin)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        with open(self.log_path, "w") as log:
            for line in self.popen.stdout:
                self.lines.append(line)
                log.write(line)
                log.flush()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def tail(self, lines: int) -> str:
        return "".join(self.lines[-lines:])

    def wait_for(self, pattern: str, timeout_s: float) -> re.Match:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            match = re.search(pattern, self.output)
            if match:
                return match
            if self.popen.poll() is not None:
                self._reader.join(timeout=5)
                match = re.search(pattern, self.output)
                if match:
                    return match
                raise AssertionError(f"{self.log_path.stem} exited ({self.popen.returncode}) before {pattern!r}:\n"
                                     f"{self.output[-3000:]}")
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {pattern!r}:\n{self.output[-3000:]}")

    def wait(self, timeout_s: float) -> int:
        try:
            code = self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.log_path.stem} still running after {timeout_s:.0f} s:\n"
                                 f"{self.output[-3000:]}") from None
        self._reader.join(timeout=5)
        return code

    def interrupt(self) -> None:
        """SIGINT to the main process only (`kill -INT PID`)."""
        self.popen.send_signal(signal.SIGINT)

    def press_ctrl_c(self) -> None:
        """Ctrl-C typed in its terminal: the terminal sends SIGINT to its whole foreground process group."""
        assert self._terminal is not None, "started without terminal=True"
        os.write(self._terminal, b"\x03")

    def signal_group(self, signum: int) -> None:
        os.killpg(self.popen.pid, signum)

    def signal_tree(self, signum: int) -> None:
        """`signum` to the process and every descendant: what systemd's default stop (KillMode=control-group)
        and a container stop do to every process of the service."""
        for pid in process_tree(self.popen.pid):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def children(self) -> list[int]:
        """Process ids of the direct children (hivemind's DHT and averager processes)."""
        found = []
        for task in Path(f"/proc/{self.popen.pid}/task").iterdir():
            found += [int(pid) for pid in (task / "children").read_text().split()]
        return found

    def stop(self) -> None:
        """Teardown: the process and whatever it left behind, whatever state the test left it in."""
        left_behind = process_tree(self.popen.pid)[1:]
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.popen.terminate()  # a second stop request: leave at once, no final epoch or version
                try:
                    self.popen.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    pass
        for pid in left_behind:  # children of a process that hung (they live in process groups of their own)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self._terminal is not None:
            os.close(self._terminal)
            self._terminal = None
