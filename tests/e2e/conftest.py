"""Real swarms for end-to-end tests: `swarm launch` and `swarm join` as separate processes on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Process:
    """A swarm CLI process whose combined output is collected (and kept in a log file for post-mortems)."""

    def __init__(self, args: list[str], log_path: Path, prefix: tuple[str, ...] = ()):
        env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
        self.log_path = log_path
        self.lines: list[str] = []
        self.popen = subprocess.Popen([*prefix, sys.executable, "-m", "swarm.cli", *args], stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
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

    def wait_for(self, pattern: str, timeout_s: float) -> re.Match:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            match = re.search(pattern, self.output)
            if match:
                return match
            if self.popen.poll() is not None:
                time.sleep(0.5)
                match = re.search(pattern, self.output)
                if match:
                    return match
                raise AssertionError(f"process exited ({self.popen.returncode}) before {pattern!r}:\n{self.output[-3000:]}")
            time.sleep(0.3)
        raise AssertionError(f"timed out waiting for {pattern!r}:\n{self.output[-3000:]}")

    def interrupt(self) -> None:
        self.popen.send_signal(signal.SIGINT)

    def wait(self, timeout_s: float) -> int:
        try:
            code = self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.log_path.stem} still running after {timeout_s:.0f} s:\n"
                                 f"{self.output[-3000:]}") from None
        self._reader.join(timeout=5)
        return code

    def tail(self, lines: int) -> str:
        return "".join(self.lines[-lines:])

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.popen.kill()


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


class Swarm:
    """A coordinator plus volunteers in a temporary folder; everything is stopped at teardown."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.processes: list[Process] = []
        (folder / "logs").mkdir(parents=True, exist_ok=True)
        self.address: str | None = None

    def launch(self, recipe: Path, port: int | None = None) -> Process:
        """Start (or, with the same folder and port, restart) the coordinator."""
        self.port = port or free_port()
        coordinator = Process(["launch", str(recipe), "--host", "127.0.0.1", "--port", str(self.port),
                               "--state-dir", str(self.folder / "coordinator"),
                               "--checkpoint-dir", str(self.folder / "checkpoints"),
                               "--summary-file", str(self.folder / "summary.json"),
                               "--final-model-dir", str(self.folder / "final"),
                               "--ledger-dir", str(self.folder / "ledger"), "--dashboard-port", "0"],
                              self.folder / "logs" / f"coordinator-{len(self.processes)}.log")
        self.processes.append(coordinator)
        self.address = coordinator.wait_for(r"swarm join --initial-peers (\S+)", timeout_s=120).group(1)
        return coordinator

    def join(self, name: str, *extra: str, prefix: tuple[str, ...] = ()) -> Process:
        peer_dir = self.folder / name
        peer = Process(["join", "--initial-peers", self.address, "--identity", str(peer_dir / "identity"),
                        "--name", name, "--team", "tests", "--threads", "1", "--host", "127.0.0.1",
                        "--stats-file", str(peer_dir / "stats.json"), "--display", "log",
                        "--cache-dir", str(self.folder.parent / "data-cache"), *extra],
                       self.folder / "logs" / f"{name}.log", prefix)
        self.processes.append(peer)
        return peer

    def stats(self, name: str) -> dict:
        return json.loads((self.folder / name / "stats.json").read_text())

    def summary(self) -> dict:
        return json.loads((self.folder / "summary.json").read_text())

    def close(self) -> None:
        for process in reversed(self.processes):
            process.stop()


@pytest.fixture
def recipe_writer():
    return write_test_recipe


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test's report carries the last lines of every swarm process, so a CI log alone can explain it."""
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    for swarm in getattr(item, "_swarms", []):
        for process in swarm.processes:
            state = "running" if process.popen.poll() is None else f"exited {process.popen.returncode}"
            report.sections.append((f"{process.log_path.name} ({state}), last 25 lines", process.tail(25)))


@pytest.fixture
def swarm_factory(tmp_path, request):
    swarms: list[Swarm] = []
    request.node._swarms = swarms

    def make() -> Swarm:
        swarm = Swarm(tmp_path / f"swarm-{len(swarms)}")
        swarms.append(swarm)
        return swarm

    yield make
    for swarm in swarms:
        swarm.close()
