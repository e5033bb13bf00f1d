"""Real `swarm` CLI processes for the tests that drive the commands as people do (tests/e2e, tests/coordinator).

Each process runs in its own process group, so a test can signal the group (as systemd or `kill -- -PGID` does)
without touching pytest, and teardown can stop whatever the process left behind. Importable from every test folder:
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


class CliProcess:
    """A `swarm` CLI process in its own process group; its combined output is collected and kept in a log file.

    `prefix`: a command to run it under (e.g. `unshare ...`).
    """

    def __init__(self, args: list[str], log_path: Path, prefix: tuple[str, ...] = ()):
        env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
        env.pop("SWARM_VERBOSE", None)  # the tests read the normal output
        self.log_path = log_path
        self.lines: list[str] = []
        self.popen = subprocess.Popen([*prefix, sys.executable, "-m", "swarm.cli", *args], stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO,
                                      start_new_session=True)
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
        """Ctrl-C to the main process only. (A terminal sends it to the whole foreground process group, hivemind's
        p2p daemons included, which die of it.)"""
        self.popen.send_signal(signal.SIGINT)

    def signal_group(self, signum: int) -> None:
        os.killpg(self.popen.pid, signum)

    def children(self) -> list[int]:
        """Process ids of the direct children (hivemind's DHT and averager processes)."""
        found = []
        for task in Path(f"/proc/{self.popen.pid}/task").iterdir():
            found += [int(pid) for pid in (task / "children").read_text().split()]
        return found

    def stop(self) -> None:
        """Teardown: the whole group, whatever state the test left it in."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)  # children left behind by a process that hung
        except ProcessLookupError:
            pass
